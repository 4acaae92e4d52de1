#!/usr/bin/env bash
# A worker command that fails its first two tries of each job (a flaky network, say) and
# succeeds on the third: it counts tries per workload in $STATE.
set -euo pipefail
input="$(cat)"
count_file="$STATE/tries-$(printf '%s' "$input" | md5sum | cut -c1-16)"
tries=$(( $(cat "$count_file" 2>/dev/null || echo 0) + 1 ))
echo "$tries" > "$count_file"
if (( tries < 3 )); then
    echo "try $tries: upstream not answering" >&2
    exit 1
fi
printf 'report for %s (took %d tries)' "$input" "$tries"
