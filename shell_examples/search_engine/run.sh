#!/usr/bin/env bash
# run.sh [QUERY...]: crawl pages/ from index.html, index it, then run each QUERY.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
python="${PYTHON:-python3}"
if [[ $# -eq 0 ]]; then set -- "gearman" "background status" "zeppelin"; fi

pids=()
data="$(mktemp -d)"
export SEARCH_DATA="$data"
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -z "${KEEP:-}" ]]; then rm -rf "$data"; else echo "kept $data" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The pipeline: insert -> fetch -> index (shell, shell, Python); search (Python).
gearman -w -f insert -- "$here/insert.sh" > /dev/null & pids+=($!)
gearman -w -f fetch -- "$here/fetch.sh" > /dev/null & pids+=($!)
gearman -w -f fetch -- "$here/fetch.sh" > /dev/null & pids+=($!)
"$python" "$here/index_worker.py" & pids+=($!)
"$python" "$here/search_worker.py" & pids+=($!)

start="file://$here/pages/index.html"
echo "== crawl from $start"
gearman -f insert -- "$start"
# Every job queues its follow-up jobs before it completes, so once nothing is queued or
# running for insert, fetch and index, the crawl is over.
wait_for_idle insert fetch index
echo "== crawled $(wc -l < "$data/urls") pages:" $(sed 's|.*/||' "$data/urls" | sort)

for query in "$@"; do
    echo "== search: $query"
    found="$(gearman -f search -- "$query")"
    echo "${found:-(nothing found)}"
done
