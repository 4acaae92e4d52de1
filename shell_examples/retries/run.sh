#!/usr/bin/env bash
# Retries with back-off, dead letters and results. Needs a gearmand started with:
#   --retry-policy 'flaky=3,backoff=200ms..1s' --retry-policy 'convert=2,backoff=200ms'
#   --result-ttl 600
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"

workers=()
export STATE
STATE="$(mktemp -d)"
cleanup() {
    for pid in "${workers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! gearman_admin --dead > /dev/null 2>&1; then
    echo "this example needs our gearmand (see README.md for its flags)" >&2
    exit 1
fi

# result HANDLE-OR-KEY [-f FUNCTION]: wait until the job is done or failed, print it.
result() {
    local status
    for _ in $(seq 1 150); do
        status=0
        gearman "$@" 2> "$STATE/err" > "$STATE/out" || status=$?
        case $status in
            0) echo "done: $(cat "$STATE/out")"; return 0 ;;
            1) echo "failed: $(sed 's/^gearman: job [^ ]* //' "$STATE/err")"; return 0 ;;
            5) sleep 0.1 ;;  # still queued or running (or waiting for its retry)
            *) cat "$STATE/err" >&2; return 1 ;;
        esac
    done
    echo "timed out waiting for $*" >&2
    return 1
}

gearman -w -f flaky -- "$here/flaky.sh" 2> /dev/null & workers+=($!)
gearman -w -f convert -- "$here/convert.sh" 2> /dev/null & workers+=($!)
wait_for_workers flaky 1
wait_for_workers convert 1

report="$(gearman -v -b -f flaky -- "march" | sed 's/^Task created: //')"
bad="$(gearman -v -b -u order-17 -f convert -- "bad order 17" | sed 's/^Task created: //')"
good="$(gearman -v -b -u order-18 -f convert -- "order 18" | sed 's/^Task created: //')"

echo "== flaky: retried after a back-off until it worked"
result --result "$report"
echo "== convert: the good order"
result --result "$good"
echo "== convert: the bad order, after its two attempts"
result --result "$bad"

echo "== gearadmin --dead (function, unique key, attempts, error)"
for _ in $(seq 1 50); do
    [[ -n "$(gearman_admin --dead | grep -v '^\.$')" ]] && break
    sleep 0.1
done
gearman_admin --dead | awk -F '\t' '$1 != "." { print $1, $3, $4, $7 }'

echo "== the bug is fixed: retry the dead letters"
touch "$STATE/fixed"
echo "retried: $(gearman_admin --retry-dead convert)"
result -f convert --result order-17
echo "dead letters left: $(gearman_admin --dead | grep -vc '^\.$' || true)"
