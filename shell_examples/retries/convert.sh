#!/usr/bin/env bash
# A worker command that cannot convert "bad" input until $STATE/fixed exists (a bug fixed
# and deployed, say); any other input converts at once.
set -euo pipefail
input="$(cat)"
if [[ $input == bad* && ! -e "$STATE/fixed" ]]; then
    echo "cannot convert $input" >&2
    exit 1
fi
printf 'converted %s' "$input"
