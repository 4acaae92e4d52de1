#!/usr/bin/env bash
# The resize worker: the job is an image on convert's stdin, the result its 200x150 thumbnail.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
exec gearman -w -f resize -- convert - -resize 200x150 -
