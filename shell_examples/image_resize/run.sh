#!/usr/bin/env bash
# run.sh [LARGE [THUMB]]: start a resize worker, make a thumbnail of LARGE, stop the worker.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
here="$(cd "$(dirname "$0")" && pwd)"
large="${1:-large.jpg}"
thumb="${2:-thumb.jpg}"

worker=""
cleanup() {
    if [[ -n "$worker" ]]; then kill "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ! -e "$large" ]]; then
    echo "making a 1600x1200 test image: $large"
    convert -size 1600x1200 plasma:fractal "$large"
fi

"$here/worker.sh" & worker=$!
"$here/resize.sh" < "$large" > "$thumb"
echo "$(identify -format '%wx%h' "$large") $large -> $(identify -format '%wx%h' "$thumb") $thumb"
