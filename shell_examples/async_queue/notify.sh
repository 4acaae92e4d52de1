#!/usr/bin/env bash
# notify: the workload is "recipient: message"; "sends" it (slowly) by appending it to OUTBOX.
set -euo pipefail
IFS= read -r line || true
recipient="${line%%:*}"
message="${line#*: }"
sleep "${NOTIFY_DELAY:-1}"      # talking to a slow mail or SMS gateway
printf 'to %s: %s\n' "$recipient" "$message" >> "${OUTBOX:-outbox}"
echo "sent to $recipient"
