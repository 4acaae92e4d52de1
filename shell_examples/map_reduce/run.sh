#!/usr/bin/env bash
# run.sh [TOP [FILE...]]: word count of FILEs (default texts/*.txt) by map and reduce workers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
top="${1:-10}"
shift || true
if [[ $# -gt 0 ]]; then files=("$@"); else files=("$here"/texts/*.txt); fi
mappers=3

pids=()
work="$(mktemp -d)"
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 "$mappers"); do
    gearman -w -f wc_map -- "$here/map.sh" & pids+=($!)
done
gearman -w -f wc_reduce -- "$here/reduce.sh" & pids+=($!)

# Map: one job per file, all at once; each writes its partial counts.
clients=()
for i in "${!files[@]}"; do
    gearman -f wc_map < "${files[$i]}" > "$work/$i.counts" & clients+=($!)
done
for pid in "${clients[@]}"; do wait "$pid"; done

# Reduce: all partial counts as one job.
cat "$work"/*.counts | gearman -f wc_reduce > "$work/totals"

echo "words: $(awk '{ n += $1 } END { print n + 0 }' "$work/totals")" \
     "(distinct: $(wc -l < "$work/totals"), files: ${#files[@]})"
head -n "$top" "$work/totals"
