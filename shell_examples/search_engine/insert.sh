#!/usr/bin/env bash
# insert: the workload is a URL. A URL not seen before is recorded and queued for fetch.
# Run one insert worker per SEARCH_DATA directory: the seen-list is a plain file.
set -euo pipefail
IFS= read -r url || true
seen="${SEARCH_DATA:-.}/urls"
touch "$seen"
if grep -qxF -- "$url" "$seen"; then
    echo "seen $url"
else
    echo "$url" >> "$seen"
    gearman -b -f fetch -- "$url"
    echo "queued $url"
fi
