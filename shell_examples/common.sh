# Sourced by the examples' scripts: gearadmin on GEARMAN_SERVER, and waiting for workers.
# (gearman reads GEARMAN_SERVER itself; gearadmin, like the C tool, only takes -h and -p.)

export GEARMAN_SERVER="${GEARMAN_SERVER:-localhost:4730}"

# gearman_admin ARGS...: gearadmin against the first server of GEARMAN_SERVER.
gearman_admin() {
    local first="${GEARMAN_SERVER%%,*}" host port=4730
    host="${first%%:*}"
    if [[ $first == *:* ]]; then port="${first##*:}"; fi
    gearadmin -h "${host:-localhost}" -p "$port" "$@"
}

# wait_for_workers FUNCTION COUNT: wait (up to 20 s) until COUNT workers can do FUNCTION.
wait_for_workers() {
    local function=$1 want=$2 have
    for _ in $(seq 1 100); do
        have="$(gearman_admin --status | awk -F '\t' -v f="$function" '$1 == f { print $4 }')"
        if (( ${have:-0} >= want )); then return 0; fi
        sleep 0.2
    done
    echo "timed out waiting for $want workers of $function" >&2
    return 1
}

# wait_for_idle FUNCTION...: wait (up to 30 s) until no job of these functions is queued or
# running (`gearadmin --status` column 2 counts both).
wait_for_idle() {
    local busy
    for _ in $(seq 1 150); do
        busy="$(gearman_admin --status | awk -F '\t' -v fs="$*" '
            BEGIN { n = split(fs, list, " "); for (i = 1; i <= n; i++) want[list[i]] = 1 }
            ($1 in want) { total += $2 } END { print total + 0 }')"
        if (( busy == 0 )); then return 0; fi
        sleep 0.2
    done
    echo "timed out waiting for the jobs of $* to finish" >&2
    return 1
}
