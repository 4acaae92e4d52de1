#!/usr/bin/env bash
# storage_worker.sh DIR: a log host; appends every "logger" job to DIR/log_file.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
cd "${1:-.}"
# --concurrency 1: one job at a time, like the C tool, so the lines spread over the hosts.
exec gearman -w -f logger --concurrency 1 >> log_file
