#!/usr/bin/env bash
# Starts the tutorial's workers, runs every client, then shows what the reverse worker printed.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
delay="${REVERSE_DELAY:-0.05}"      # seconds per character (the PHP worker sleeps 1)
log="$(mktemp)"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$python" "$here/reverse_worker.py" --delay "$delay" > "$log" & pids+=($!)
"$python" "$here/fail_worker.py" > /dev/null & pids+=($!)

echo "== reverse_client.py"
"$python" "$here/reverse_client.py" "Hello!"
echo "== reverse_client_tasks.py"
"$python" "$here/reverse_client_tasks.py"
echo "== reverse_client_app_data.py"
"$python" "$here/reverse_client_app_data.py"
echo "== reverse_client_bg.py"
"$python" "$here/reverse_client_bg.py" --interval "$(awk "BEGIN { print $delay * 3 }")"
echo "== reverse_client.py --function reverse_fail"
"$python" "$here/reverse_client.py" --function reverse_fail "Hello!" || echo "(exit status $?)"
echo "== reverse_client.py --function reverse_exception"
"$python" "$here/reverse_client.py" --function reverse_exception "Hello!" || echo "(exit status $?)"
echo "== what reverse_worker.py printed"
cat "$log"
