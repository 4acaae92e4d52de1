#!/usr/bin/env bash
# The reverse client in shell: prints the reverse of its argument (default "Hello World!").
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
gearman -f reverse -- "${1:-Hello World!}"
echo   # the result has no newline of its own
