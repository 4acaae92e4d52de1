#!/usr/bin/env bash
# The reverse worker in shell: every job runs `rev`, workload on stdin, result from stdout.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
exec gearman -w -f reverse -- rev
