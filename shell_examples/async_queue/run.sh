#!/usr/bin/env bash
# Queue three notifications in the background, then let a worker send them and follow them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
python="${PYTHON:-python3}"
export NOTIFY_DELAY="${NOTIFY_DELAY:-0.3}"

worker=""
work="$(mktemp -d)"
export OUTBOX="$work/outbox"
cleanup() {
    if [[ -n "$worker" ]]; then kill "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# No worker yet: the jobs wait in the server's queue. -v prints "Task created: <handle>".
handles=()
for note in "alice@example.com: your report is ready" \
            "bob@example.com: build 42 passed" \
            "carol@example.com: disk 90% full"; do
    created="$(gearman -v -b -f notify -- "$note")"
    echo "$created"
    handles+=("${created#Task created: }")
done

echo "== gearadmin --show-jobs (handle, retries, ignore, background)"
gearman_admin --show-jobs
echo "== job_status.py"
"$python" "$here/job_status.py" "${handles[@]}"

echo "== starting the worker; following the jobs"
gearman -w -f notify -- "$here/notify.sh" > /dev/null & worker=$!
"$python" "$here/job_status.py" --wait "${handles[@]}"

echo "== outbox"
cat "$OUTBOX"
