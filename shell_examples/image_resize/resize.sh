#!/usr/bin/env bash
# The resize client: an image on stdin, its thumbnail on stdout.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
exec gearman -f resize
