#!/usr/bin/env bash
# storage_worker.sh DIR: a log host; appends every "logger" job to DIR/log_file.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
cd "${1:-.}"
exec gearman -w -f logger >> log_file
