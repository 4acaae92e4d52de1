#!/usr/bin/env bash
# run.sh PATTERN [WORKDIR]: collect a log on three hosts, then grep all of them at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
if [[ $# -lt 1 || -z "$1" ]]; then
    echo "usage: run.sh PATTERN [WORKDIR]: grep the collected logs for PATTERN" >&2
    exit 2
fi
pattern="$1"

pids=()
tmp=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $# -gt 1 ]]; then
    work="$2"
else
    tmp="$(mktemp -d)"
    work="$tmp"
fi
"$here/../log_collection/run.sh" "$work" >&2

functions=()
for dir in "$work"/host*/; do
    n="${dir%/}"; n="${n##*host}"
    (cd "$dir" && exec gearman -w -f "logger$n" -- "$here/dgrep") & pids+=($!)
    functions+=(-f "logger$n")
done

# gearman -f logger1 -f logger2 -f logger3 PATTERN
gearman "${functions[@]}" -- "$pattern"
