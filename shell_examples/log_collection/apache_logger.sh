#!/usr/bin/env bash
# apache_logger.sh [GEARMAN OPTIONS]: the access-log pipe for Apache, the tutorial's
# `gearman -n -f logger` (one job per line) made safe for Apache 2.4, which sends its piped
# loggers SIGTERM at every graceful restart and stop: that would kill gearman with the lines
# it has not sent yet. With SIGTERM ignored (kept across exec), gearman reads on until the end
# of its input, which comes when the last Apache process of that generation has exited, and
# exits after its last job. Use it as:  CustomLog "| /path/to/apache_logger.sh" common
set -euo pipefail
trap '' TERM
exec gearman -n -f logger "$@"
