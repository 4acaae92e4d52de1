#!/usr/bin/env bash
# reduce: "word count" lines on stdin -> "count word" totals, most frequent first, then by word.
set -euo pipefail
export LC_ALL=C
awk 'NF == 2 { total[$1] += $2 } END { for (w in total) print total[w], w }' \
    | sort -k1,1nr -k2,2
