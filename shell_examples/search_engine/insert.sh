#!/usr/bin/env bash
# insert: the workload is a URL. A URL not seen before is recorded (narada_store.py: in SQLite
# or MariaDB, so any number of insert workers share one list) and queued for fetch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
IFS= read -r url || true
status=0
"${PYTHON:-python3}" "$here/narada_store.py" add-url "$url" || status=$?
case $status in
    0) gearman -b -f fetch -- "$url"; echo "queued $url" ;;
    1) echo "seen $url" ;;
    *) exit "$status" ;;
esac
