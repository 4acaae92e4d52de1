#!/usr/bin/env bash
# run.sh [WORKDIR]: three log hosts collect an access log fed through `tail -f | gearman -n`.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
hosts=3
lines=30

pids=()
tmp=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $# -gt 0 ]]; then
    work="$1"
    mkdir -p "$work"
else
    tmp="$(mktemp -d)"
    work="$tmp"
fi
work="$(cd "$work" && pwd)"
: > "$work/access_log"

# A log line in Common Log Format: host ident user [time] "request" status bytes
log_line() {
    local i=$1 method=GET path="/page$(( $1 % 7 )).html" status=200
    if (( i % 5 == 0 )); then method=POST path=/login; fi
    if (( i % 6 == 0 )); then status=404 path="/missing$i"; fi
    printf '192.0.2.%d - - [10/Oct/2025:13:55:%02d +0000] "%s %s HTTP/1.1" %d %d\n' \
        $(( i % 4 + 1 )) "$i" "$method" "$path" "$status" $(( 100 * i ))
}

# The log hosts, each with its own storage worker.
for n in $(seq 1 "$hosts"); do
    mkdir -p "$work/host$n"
    : > "$work/host$n/log_file"
    "$here/storage_worker.sh" "$work/host$n" & pids+=($!)
done
wait_for_workers logger "$hosts"   # not needed (jobs wait in the queue), but spreads the lines

# tail -f access_log | gearman -n -f logger, with tail's pid known so it can be stopped:
# when tail ends, gearman sees end of input, waits for its last jobs and exits.
mkfifo "$work/feed"
gearman -n -f logger < "$work/feed" & feeder=$!
tail -n +1 -f "$work/access_log" > "$work/feed" 2>/dev/null & tailer=$!
pids+=("$tailer" "$feeder")

# The web server writes its log while tail follows it.
for i in $(seq 1 "$lines"); do log_line "$i" >> "$work/access_log"; done

stored() { cat "$work"/host*/log_file | wc -l; }
for _ in $(seq 1 200); do
    (( $(stored) >= lines )) && break
    sleep 0.05
done
kill "$tailer"
wait "$feeder"
rm -f "$work/feed"

for n in $(seq 1 "$hosts"); do
    echo "host$n: $(wc -l < "$work/host$n/log_file") lines"
done
echo "total: $(stored) of $(wc -l < "$work/access_log") lines stored"
