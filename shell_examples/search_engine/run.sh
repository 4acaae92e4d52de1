#!/usr/bin/env bash
# run.sh [QUERY...]: serve pages/ with Python's http.server on 127.0.0.1:SITE_PORT, crawl it
# from index.html, index it, then run each QUERY. SEARCH_DB (MariaDB) and SEARCH_CACHE
# (memcached) choose where the data goes (narada_store.py); default: SQLite in a temporary
# directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
python="${PYTHON:-python3}"
port="${SITE_PORT:-8000}"
if [[ $# -eq 0 ]]; then set -- "gearman" "background status" "zeppelin"; fi

pids=()
data="$(mktemp -d)"
export SEARCH_DATA="$data"
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -z "${KEEP:-}" ]]; then
        "$python" "$here/narada_store.py" drop || true    # the tables, or the SQLite file
        rm -rf "$data"
    else
        echo "kept $data ${SEARCH_DB:+and the tables in $SEARCH_DB}" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The site: pages/ over HTTP, on loopback only.
"$python" -m http.server --bind 127.0.0.1 --directory "$here/pages" "$port" \
    > "$data/http.log" 2>&1 & pids+=($!)
site="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    if curl -fs -o /dev/null "$site/index.html"; then break; fi
    sleep 0.1
done
curl -fs -o /dev/null "$site/index.html"     # fails the run if the site never came up

# The pipeline: insert -> fetch -> index (shell, shell, Python); search (Python).
gearman -w -f insert -- "$here/insert.sh" > /dev/null & pids+=($!)
gearman -w -f fetch -- "$here/fetch.sh" > /dev/null & pids+=($!)
gearman -w -f fetch -- "$here/fetch.sh" > /dev/null & pids+=($!)
"$python" "$here/index_worker.py" & pids+=($!)
"$python" "$here/search_worker.py" & pids+=($!)

start="$site/index.html"
echo "== crawl from $start"
gearman -f insert -- "$start"
# Every job queues its follow-up jobs before it completes, so once nothing is queued or
# running for insert, fetch and index, the crawl is over.
wait_for_idle insert fetch index
crawled="$("$python" "$here/narada_store.py" urls)"
echo "== crawled $(wc -l <<< "$crawled") pages:" $(sed 's|.*/||' <<< "$crawled" | sort)

for query in "$@"; do
    echo "== search: $query"
    gearman -f search -- "$query"
done
