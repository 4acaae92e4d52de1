#!/usr/bin/env bash
# Runs both hello-world clients against the shell worker, then against the Python worker.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

worker=""
stop_worker() {
    if [[ -n "$worker" ]]; then
        kill "$worker" 2>/dev/null || true
        wait "$worker" 2>/dev/null || true
        worker=""
    fi
}
trap stop_worker EXIT
trap 'exit 130' INT TERM

for kind in shell python; do
    if [[ $kind == shell ]]; then
        "$here/worker.sh" & worker=$!
    else
        "$python" "$here/worker.py" & worker=$!
    fi
    # No need to wait for the worker: the server queues the job until it registers.
    echo "$kind worker, shell client:  $("$here/client.sh")"
    echo "$kind worker, python client: $("$python" "$here/client.py")"
    stop_worker
done
