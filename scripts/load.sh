#!/usr/bin/env bash
# Load test of the `bench_server` example with wrk: first executions (a new key per
# request) and replays (a fixed set of keys, each used once before the run) for every
# store the build supports, each number shown as a ratio to the same handler without
# the attribute (STORE=none) measured in the same run. Prints a Markdown table.
#
# Settings (environment):
#   DURATION=10s     wrk run time per measurement
#   ROUNDS=3         rounds over all stores; each number is the median of its rounds
#   CONNECTIONS=32   wrk connections
#   THREADS=1        wrk threads
#   WORKERS=1        bench_server tokio worker threads
#   KEYS=64          size of the replay key set
#   STORES="none memory redis postgres tiered-redis tiered-postgres"
#                    stores to measure (none is always measured); tiered-* is the shared
#                    store with an in-process copy of completed responses serving replays;
#                    tiered-redis-on-miss and tiered-postgres-on-miss (not measured unless
#                    named) copy the replayed responses only
#   FEATURES=redis,postgres               cargo features bench_server is built with
#   PORT=18080       where bench_server listens, on 127.0.0.1
#   PIN=1            pin bench_server and wrk to different CPUs (taskset), when there are 2+,
#                    and the local Redis and Postgres servers to wrk's, for the run only
#   REDIS_URL, DATABASE_URL   passed on to bench_server
#   SERVER=path      measure this bench_server binary (another build, another
#                    implementation of its interface) instead of building one
#
# A store the build or the machine cannot serve is skipped with the server's reason.
# Every server started here is stopped on exit, error or interrupt.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
STORES=${STORES:-none memory redis postgres tiered-redis tiered-postgres}
PORT=${PORT:-18080}
PIN=${PIN:-1}
LOG_NAME=load
. scripts/bench-common.sh

need_tools wrk curl
server_cpu=() wrk_cpu=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    server_cpu=(taskset -c 0) wrk_cpu=(taskset -c 1)
fi
prepare_stores
# The store's server shares wrk's CPU, not bench_server's. In a deployment it runs on
# a machine of its own; on bench_server's CPU its work would be counted as the
# attribute's, and each of its wake-ups would preempt the server (a Redis replay ran at
# about half the throughput with Redis there as with it beside wrk).
if [ ${#wrk_cpu[@]} -gt 0 ]; then
    pin_processes 1 redis-server postgres
fi

runs() { curl -sf "$BASE/stats" | sed -E 's/.*"runs":([0-9]+).*/\1/'; }

# Runs wrk with script $1 (and its arguments); prints the RESULT line's fields.
measure() {
    local script=$1; shift
    local out="$WORKDIR/wrk.out"
    "${wrk_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "scripts/load/$script" "$BASE" -- "$@" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    grep '^RESULT ' "$out" | sed 's/^RESULT //' || { cat "$out" >&2; exit 1; }
}

# Rounds go over every store in turn, so that a busy moment of the machine weighs on
# all of them alike rather than on whichever store was being measured.
declare -A result
measured=()
run_id="$(date +%s)-$$"

for round in $(seq 1 "$ROUNDS"); do
    for store in "${candidates[@]}"; do
        if [ "$round" -gt 1 ]; then
            case " ${measured[*]} " in *" $store "*) ;; *) continue ;; esac
        fi
        for workload in first replay; do
            if ! start_server "$store" 20 "${server_cpu[@]}"; then
                if [ "$store" = none ] || [ "$store" = memory ]; then
                    log "bench_server failed to start with STORE=$store: $skip_reason"
                    exit 1
                fi
                log "skipping STORE=$store: $skip_reason"
                continue 2
            fi
            id="$run_id-$round-$store"
            log "round $round/$ROUNDS, STORE=$store, $workload: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
            if [ "$workload" = first ]; then
                fields=$(measure first.lua "$id")
            else
                prime_replay_keys "$id"
                fields=$(measure replay.lua "$id" "$KEYS")
            fi
            result[$store,$workload]="${result[$store,$workload]:-}|$fields runs=$(runs)"
            stop_server
        done
        [ "$round" -gt 1 ] || measured+=("$store")
    done
done

# field NAME ROUNDS: the median over the rounds ("|"-separated) of the value of NAME=...
field() {
    tr '| ' '\n\n' <<<"$2" | sed -n "s/^$1=//p" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# total NAME ROUNDS: the sum over the rounds.
total() { tr '| ' '\n\n' <<<"$2" | sed -n "s/^$1=//p" | awk '{ s += $1 } END { print s + 0 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
# spread NAME ROUNDS BASE_ROUNDS: the lowest and highest ratio of NAME to the bare
# handler's within one round (each round measures both back to back), "0.50–0.62".
spread() {
    paste -d' ' <(tr '|' '\n' <<<"$2" | sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p") \
        <(tr '|' '\n' <<<"$3" | sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p") \
        | awk '$2 > 0 { r = $1 / $2; if (n == 0 || r < lo) lo = r; if (n == 0 || r > hi) hi = r; n++ }
               END { if (n) printf "%.2f–%.2f", lo, hi; else print "n/a" }'
}
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION on loopback, median of $ROUNDS rounds;" \
    "bench_server WORKERS=$WORKERS; $(nproc) CPUs${server_cpu[*]:+, server and wrk pinned to separate CPUs}${pinned:+, $pinned on the CPU of wrk}."
echo "Ratios are to STORE=none (the same handler without the attribute) in this run:" \
    "above 1× is more throughput, or more latency. The range is that of the throughput ratio" \
    "within each round. Errors and handler runs are totals over the rounds."
echo
echo "| store | workload | req/s | × none | range | p50 ms | × none | p99 ms | × none | HTTP errors | handler runs |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for store in "${measured[@]}"; do
    for workload in first replay; do
        r=${result[$store,$workload]}
        base=${result[none,$workload]}
        rps=$(field rps "$r") p50=$(field p50_us "$r") p99=$(field p99_us "$r")
        errors=$(( $(total http_errors "$r") + $(total socket_errors "$r") ))
        label=$([ "$workload" = first ] && echo "first execution" || echo "replay")
        printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$store" "$label" "$rps" "$(ratio "$rps" "$(field rps "$base")")" "$(spread rps "$r" "$base")" \
            "$(ms "$p50")" "$(ratio "$p50" "$(field p50_us "$base")")" \
            "$(ms "$p99")" "$(ratio "$p99" "$(field p99_us "$base")")" \
            "$errors" "$(total runs "$r")"
    done
done
