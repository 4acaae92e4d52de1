#!/usr/bin/env bash
# log_hosts.sh [WORKDIR]: the tutorial's slides. Three log hosts, 127.0.0.2, .3 and .4, each
# running a job server (our gearmand, on LOG_HOST_PORT, default 4730), a storage worker
# (`gearman -w -f logger >> log_file`) and a dgrep worker for its own function
# (`gearman -w -f loggerN -- dgrep`); the workers connect to all three job servers, so any of
# them takes the log lines and answers the query. An access log goes in with
# `gearman -n -f logger`, then the slides' query is asked of each host in turn:
#     gearman -h HOST -f logger1 -f logger2 -f logger3 news_archive | cut -f 4,5,7 -d' '
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${LOG_HOST_PORT:-4730}"
addresses=(127.0.0.2 127.0.0.3 127.0.0.4)
servers="$(printf "%s:$port," "${addresses[@]}")"; servers="${servers%,}"
lines=60

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

# up ADDRESS: whether a job server answers there (bounded: 20 s).
up() {
    for _ in $(seq 1 200); do
        if gearadmin -h "$1" -p "$port" --getpid > /dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "log_hosts.sh: no job server at $1:$port" >&2
    return 1
}

n=0
for address in "${addresses[@]}"; do
    n=$(( n + 1 ))
    mkdir -p "$work/host$n"
    : > "$work/host$n/log_file"
    gearmand -p "$port" -L "$address" --log-file="$work/gearmand-$address.log" & pids+=($!)
done
for address in "${addresses[@]}"; do up "$address"; done
export GEARMAN_SERVER="$servers"
for n in 1 2 3; do
    "$here/../log_collection/storage_worker.sh" "$work/host$n" & pids+=($!)
    (cd "$work/host$n" && exec gearman -w -f "logger$n" -- "$here/dgrep") & pids+=($!)
done
# Each worker registers with every job server; wait until all six are known to each.
for address in "${addresses[@]}"; do
    for _ in $(seq 1 200); do
        known="$(gearadmin -h "$address" -p "$port" --status | awk -F '\t' '
            $1 == "logger" || $1 ~ /^logger[123]$/ { n += $4 } END { print n + 0 }')"
        (( known >= 6 )) && break
        sleep 0.1
    done
done

# The web servers' access log, in Common Log Format; every fourth request is for the archive.
for i in $(seq 1 "$lines"); do
    path="/index.html"
    if (( i % 4 == 0 )); then path="/news_archive/2025/$(( i % 12 + 1 )).html"; fi
    printf '192.0.2.%d - - [10/Oct/2025:13:%02d:%02d +0000] "GET %s HTTP/1.1" 200 %d\n' \
        $(( i % 9 + 1 )) $(( i / 60 )) $(( i % 60 )) "$path" $(( 1000 + i ))
done > "$work/access_log"
gearman -n -f logger < "$work/access_log" > /dev/null
for n in 1 2 3; do echo "host$n (${addresses[n-1]}): $(wc -l < "$work/host$n/log_file") lines"; done

for address in "${addresses[@]}"; do
    h="$address"; if [[ $port != 4730 ]]; then h="$address -p $port"; fi
    echo "== gearman -h $h -f logger1 -f logger2 -f logger3 news_archive | cut -f 4,5,7 -d' '"
    # shellcheck disable=SC2086
    gearman -h $h -f logger1 -f logger2 -f logger3 news_archive | cut -f 4,5,7 -d' '
done
