#!/usr/bin/env bash
# Runs the tutorial's PHP examples (Debian: php-cli, php-gearman) against GEARMAN_SERVER:
# hello world, then the reverse worker with tasks, application data and a background job,
# then a failing job; last, what the reverse worker printed.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
here="$(cd "$(dirname "$0")" && pwd)"
php="${PHP:-php}"
delay="${REVERSE_DELAY:-0.05}"      # seconds per character (1 when run by hand)
log="$(mktemp)"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$php" -r 'exit(extension_loaded("gearman") ? 0 : 1);'; then
    echo "run.sh: PHP's gearman extension is missing (Debian: apt-get install php-cli php-gearman)" >&2
    exit 1
fi

echo "== hello world"
"$php" "$here/hello_worker.php" & hello=$!
"$php" "$here/hello_client.php" "Hello World!"
kill "$hello"; wait "$hello" 2>/dev/null || true   # the next worker takes over "reverse"

"$php" "$here/reverse_worker.php" "$delay" > "$log" & pids+=($!)
"$php" "$here/fail_worker.php" > /dev/null & pids+=($!)

echo "== reverse_client_tasks.php"
"$php" "$here/reverse_client_tasks.php"
echo "== reverse_client_app_data.php"
"$php" "$here/reverse_client_app_data.php"
echo "== reverse_client_bg.php"
"$php" "$here/reverse_client_bg.php" "$(awk "BEGIN { print $delay * 3 }")"
echo "== hello_client.php Hello! reverse_fail"
"$php" "$here/hello_client.php" "Hello!" reverse_fail || echo "(exit status $?)"
echo "== what reverse_worker.php printed"
cat "$log"
