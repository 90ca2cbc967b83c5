#!/usr/bin/env bash
# Instructions per request of `bench_server` under load, counted by callgrind: a measure
# that, unlike throughput, does not move with the machine's load. For each store, first
# executions (a new key per request) and replays (a fixed set of keys, each used once
# before), each as a ratio to the same handler without the attribute (STORE=none).
# Prints a Markdown table.
#
# Each measurement starts bench_server under callgrind, warms it up with wrk, zeroes the
# counters, runs wrk again, and divides the instructions of the whole server process by
# the requests wrk completed in that second run.
#
# Settings (environment):
#   WARMUP=2s        wrk run before the counters are zeroed
#   DURATION=6s      wrk run that is counted
#   CONNECTIONS=8    wrk connections
#   KEYS=64          size of the replay key set
#   STORES="none memory redis"   stores to measure (none is always measured)
#   FEATURES=redis,postgres      cargo features bench_server is built with
#   PORT=18081       where bench_server listens, on 127.0.0.1
#   SERVER=path      measure this bench_server binary instead of building one
#
# Under valgrind, SHA-256 runs in software (about 3 500 instructions per 64-byte block);
# natively the `sha2` crate uses the CPU's SHA extensions where it has them.
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-6s}
CONNECTIONS=${CONNECTIONS:-8}
STORES=${STORES:-none memory redis}
PORT=${PORT:-18081}
WORKERS=1
LOG_NAME=instructions
. scripts/bench-common.sh

need_tools valgrind wrk curl
prepare_stores

# wrk for $1 seconds with the script for workload $2 and run id $3; prints the requests.
load() {
    local duration=$1 workload=$2 id=$3 args
    if [ "$workload" = first ]; then args=("$id"); else args=("$id" "$KEYS"); fi
    wrk -t1 -c"$CONNECTIONS" -d"$duration" -s "scripts/load/$workload.lua" "$BASE" -- "${args[@]}" \
        >"$WORKDIR/wrk.out" 2>&1 || { cat "$WORKDIR/wrk.out" >&2; exit 1; }
    sed -n 's/^RESULT .*requests=\([0-9]*\).*/\1/p' "$WORKDIR/wrk.out"
}

# Sets `count` to the instructions per request for STORE=$1, workload $2 (first or
# replay); empty if the server could not start.
measure() {
    local store=$1 workload=$2 id requests total
    count=""
    id="instr-$(date +%s)-$$-$store-$workload"
    # valgrind makes the start slow, hence the long wait.
    if ! start_server "$store" 60 valgrind --tool=callgrind --callgrind-out-file="$WORKDIR/callgrind.out"; then
        log "STORE=$store exited: $skip_reason"
        return 0
    fi
    [ "$workload" = first ] || prime_replay_keys "$id"
    load "$WARMUP" "$workload" "$id-warmup" >/dev/null
    # The replay keys are the primed ones in both runs; first executions get new ones.
    [ "$workload" = replay ] || id="$id-counted"
    callgrind_control -z "$server_pid" >/dev/null 2>&1
    requests=$(load "$DURATION" "$workload" "$id")
    callgrind_control -d "$server_pid" >/dev/null 2>&1
    # The dump after the zeroing is the newest file; its totals are the counted run.
    total=$(ls -t "$WORKDIR"/callgrind.out* | head -n1 | xargs sed -n 's/^totals: *\([0-9]*\).*/\1/p')
    stop_server
    rm -f "$WORKDIR"/callgrind.out*
    [ -n "$total" ] && [ "${requests:-0}" -gt 0 ] || { log "no count for STORE=$store $workload"; exit 1; }
    count=$((total / requests))
}

declare -A result
for store in "${candidates[@]}"; do
    for workload in first replay; do
        log "STORE=$store, $workload"
        measure "$store" "$workload"
        if [ -z "$count" ]; then
            [ "$store" != none ] || { log "bench_server failed to start with STORE=none"; exit 1; }
            log "skipping STORE=$store"
            break
        fi
        result[$store,$workload]=$count
    done
done

echo
echo "Instructions per request in bench_server (callgrind; wrk -c$CONNECTIONS, $DURATION counted after $WARMUP)."
echo "The ratio is that of STORE=none to the store: above 1× is fewer instructions."
echo
echo "| store | workload | instructions | × none |"
echo "| --- | --- | ---: | ---: |"
for store in "${candidates[@]}"; do
    for workload in first replay; do
        n=${result[$store,$workload]:-}
        [ -n "$n" ] || continue
        label=$([ "$workload" = first ] && echo "first execution" || echo "replay")
        printf '| %s | %s | %s | %s |\n' "$store" "$label" "$n" \
            "$(awk -v a="${result[none,$workload]}" -v b="$n" 'BEGIN { printf "%.2f×", a / b }')"
    done
done
