#!/usr/bin/env bash
# map: text on stdin -> "word count" lines on stdout (ASCII letters, lower case).
set -euo pipefail
export LC_ALL=C
tr -cs '[:alpha:]' '\n' | tr '[:upper:]' '[:lower:]' | awk 'NF' | sort | uniq -c \
    | awk '{ print $2, $1 }'
