#!/usr/bin/env bash
# apache_run.sh [WORKDIR]: Debian's apache2 (run as root; it serves as www-data) on
# 127.0.0.1:APACHE_PORT (default 8080) with a minimal config of our own, its access log piped
# with `CustomLog "| gearman -n -f logger" common` to three log hosts' storage workers.
# Requests before and after `apache2 -k graceful`, then `apache2 -k stop`; every request must
# be stored on exactly one log host. No system file is read or changed but the modules.
set -euo pipefail
export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../common.sh
source "$here/../common.sh"
apache="${APACHE:-/usr/sbin/apache2}"
modules="${APACHE_MODULES:-/usr/lib/apache2/modules}"
port="${APACHE_PORT:-8080}"
requests="${REQUESTS:-15}"          # per phase: before the graceful restart, and after it
hosts=3

pids=()
tmp=""
www=""
conf=""
cleanup() {
    if [[ -n "$conf" && -s "$work/apache2.pid" ]] && kill -0 "$(cat "$work/apache2.pid")" 2>/dev/null
    then
        "$apache" -f "$conf" -k stop 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "$www" ]]; then rm -rf "$www"; fi
    if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ! -x "$apache" ]]; then
    echo "apache_run.sh: $apache not found (Debian: apt-get install apache2)" >&2
    exit 1
fi
if [[ $# -gt 0 ]]; then
    work="$1"
    mkdir -p "$work"
else
    tmp="$(mktemp -d)"
    work="$tmp"
fi
work="$(cd "$work" && pwd)"

# The site, somewhere www-data can read it (WORKDIR may be private to root).
www="$(mktemp -d /tmp/tut_www.XXXXXX)"
chmod 755 "$www"
for page in index news_archive about; do
    printf '<html><head><title>%s</title></head><body>%s</body></html>\n' "$page" "$page" \
        > "$www/$page.html"
done

# Apache 2.4 starts a "| program" log without a shell and without searching PATH, so the
# tutorial's "| gearman -n -f logger" needs gearman's full path; and at every graceful
# restart and stop it sends the logger SIGTERM, which kills gearman with the lines it has not
# sent yet. apache_logger.sh runs the same command with SIGTERM ignored: it loses nothing.
#   LOGGER_PIPE=wrapper (default)  "| /path/to/apache_logger.sh"
#   LOGGER_PIPE=path               "| /path/to/gearman -n -f logger"  (needs SETTLE=1: wait
#                                  until every line is stored before the restart and stop)
case "${LOGGER_PIPE:-wrapper}" in
    wrapper) logger="| $here/apache_logger.sh" ;;
    path) logger="| $(command -v gearman) -n -f logger" ;;
    *) echo "apache_run.sh: LOGGER_PIPE is wrapper or path" >&2; exit 2 ;;
esac

# A minimal config of our own: the event MPM, static files, one Listen on loopback, and the
# tutorial's piped access log. The logger inherits our environment (PATH, GEARMAN_SERVER).
conf="$work/apache2.conf"
cat > "$conf" <<CONF
ServerRoot "$work"
DefaultRuntimeDir "$work"
PidFile "$work/apache2.pid"
ErrorLog "$work/error.log"
LogLevel warn
LoadModule mpm_event_module $modules/mod_mpm_event.so
LoadModule authz_core_module $modules/mod_authz_core.so
LoadModule mime_module $modules/mod_mime.so
LoadModule dir_module $modules/mod_dir.so
TypesConfig /dev/null
AddType text/html .html
User www-data
Group www-data
ServerName 127.0.0.1
Listen 127.0.0.1:$port
DocumentRoot "$www"
<Directory "$www">
    Require all granted
</Directory>
DirectoryIndex index.html
LogFormat "%h %l %u %t \"%r\" %>s %b" common
CustomLog "$logger" common
CONF

for n in $(seq 1 "$hosts"); do
    mkdir -p "$work/host$n"
    : > "$work/host$n/log_file"
    "$here/storage_worker.sh" "$work/host$n" & pids+=($!)
done
wait_for_workers logger "$hosts"

# The lines of our requests that the log hosts stored (not those of the readiness probe).
stored() { cat "$work"/host*/log_file | grep -vc '?probe ' || true; }
# wait_until SECONDS COMMAND...: poll COMMAND every 0.1 s, fail after SECONDS.
wait_until() {
    local tries=$(( $1 * 10 )); shift
    for _ in $(seq 1 "$tries"); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    echo "apache_run.sh: timed out waiting for: $*" >&2
    return 1
}
answers() { curl -s -o /dev/null "http://127.0.0.1:$port/?probe"; }
stopped() { ! kill -0 "$apache_pid" 2>/dev/null; }
all_stored() { (( $(stored) >= sent )); }
settle() {    # with SETTLE=1, wait until the logger has passed on every line so far
    sent=$(wc -l < "$work/requests")
    if [[ -n "${SETTLE:-}" ]]; then wait_until 20 all_stored; fi
}

: > "$work/requests"
request() {   # request PATH: one GET, its path recorded
    curl -s -o /dev/null -w '%{http_code} ' "http://127.0.0.1:$port$1" >> "$work/requests"
    echo "$1" >> "$work/requests"
}
phase() {     # phase NAME: $requests requests, some to pages that are not there
    local i
    for i in $(seq 1 "$requests"); do
        case $(( i % 3 )) in
            0) request "/news_archive.html?$1=$i" ;;
            1) request "/index.html?$1=$i" ;;
            2) request "/missing/$1/$i" ;;
        esac
    done
}

echo "== apache2 -k start (CustomLog \"$logger\" common)"
"$apache" -f "$conf" -k start
wait_until 20 answers
apache_pid="$(cat "$work/apache2.pid")"
phase start
settle

echo "== apache2 -k graceful"
"$apache" -f "$conf" -k graceful      # a new logger for the new generation
wait_until 20 answers
phase graceful
settle

echo "== apache2 -k stop"
"$apache" -f "$conf" -k stop           # the loggers see end of input and finish their jobs
wait_until 20 stopped
sent=$(wc -l < "$work/requests")
wait_until 20 all_stored || true

for n in $(seq 1 "$hosts"); do
    echo "host$n: $(grep -vc '?probe ' "$work/host$n/log_file" || true) lines"
done
echo "total: $(stored) of $sent requests logged"
