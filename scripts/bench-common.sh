# Shared by scripts/load.sh and scripts/instructions.sh, which source it after setting
# LOG_NAME (the prefix of their messages), STORES and PORT: the settings both take, the
# tools and servers they need, the bench_server build, and the stopping of every server
# started, on exit, error or interrupt.

FEATURES=${FEATURES-redis,postgres}
KEYS=${KEYS:-64}
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

BASE="http://127.0.0.1:$PORT"
SERVER=${SERVER:-}
WORKDIR=$(mktemp -d)

log() { printf '%s: %s\n' "$LOG_NAME" "$*" >&2; }

server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
# Affinities changed by pin_processes, as "PID LIST" lines, put back on exit.
restore_affinity=()
# Removes the records bench_server left in Redis: millions of keys kept for 24 h after
# a run, which would slow every `KEYS` and `SCAN` on the server until they expire.
remove_redis_records() {
    case " $STORES " in *redis*) ;; *) return 0 ;; esac
    command -v redis-cli >/dev/null || return 0
    redis-cli -u "$REDIS_URL" --scan --pattern 'idempotent_bench:*' 2>/dev/null \
        | xargs -r -n 5000 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}
cleanup() {
    stop_server
    remove_redis_records
    local entry
    for entry in "${restore_affinity[@]}"; do
        # shellcheck disable=SC2086 # "PID LIST" splits into taskset's two arguments
        taskset -a -p -c ${entry#* } ${entry%% *} >/dev/null 2>&1 || true
    done
    rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pin_processes CPU NAME...: moves the running processes called NAME (all their
# threads, and the processes they fork from now on) to CPU until the script exits.
# Sets `pinned` to the names it moved; a process it may not move is left where it is.
pinned=""
pin_processes() {
    local cpu=$1 name pid list
    shift
    for name in "$@"; do
        for pid in $(pgrep -x "$name"); do
            list=$(taskset -p -c "$pid" 2>/dev/null | sed -n 's/.*: //p') || continue
            [ -n "$list" ] || continue
            taskset -a -p -c "$cpu" "$pid" >/dev/null 2>&1 || continue
            restore_affinity+=("$pid $list")
            case " $pinned " in *" $name "*) ;; *) pinned+="${pinned:+ }$name" ;; esac
        done
    done
}

# need_tools TOOL...: installs with apt-get those that are missing.
need_tools() {
    local missing=() tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || { log "must run as root to install ${missing[*]}"; exit 1; }
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# Makes sure the servers of the stores in STORES run (best effort: a store whose server
# is missing is skipped), then builds bench_server unless SERVER names one. Sets
# `candidates` to the stores to measure, `none` first.
prepare_stores() {
    case " $STORES " in
        *redis* | *postgres*)
            scripts/services.sh || log "services.sh failed; the Redis and Postgres runs may be skipped" ;;
    esac
    if [ -z "$SERVER" ]; then
        log "building bench_server (release${FEATURES:+, features $FEATURES})"
        cargo build --release --quiet --example bench_server ${FEATURES:+--features "$FEATURES"}
        SERVER=target/release/examples/bench_server
    fi
    [ -x "$SERVER" ] || { log "SERVER=$SERVER is not an executable"; exit 1; }
    candidates=(none)
    local store
    for store in $STORES; do
        case " ${candidates[*]} " in *" $store "*) ;; *) candidates+=("$store") ;; esac
    done
}

# start_server STORE SECONDS COMMAND...: starts bench_server for STORE, run by COMMAND
# (`taskset -c 0`, `valgrind ...`, or nothing), with one worker unless WORKERS says
# otherwise. Returns 1, with the server's reason in `skip_reason`, if it exits before
# answering /health; fails the script if it does not answer within SECONDS.
start_server() {
    local store=$1 seconds=$2 out="$WORKDIR/server-$1.log"
    shift 2
    STORE=$store BIND="127.0.0.1:$PORT" WORKERS=${WORKERS:-1} RUST_LOG=${RUST_LOG:-warn} \
        "$@" "$SERVER" >"$out" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 $((seconds * 10))); do
        if curl -sf "$BASE/health" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null || true
            server_pid=""
            skip_reason=$(grep -m1 -i error "$out" || tail -n1 "$out")
            return 1
        fi
        sleep 0.1
    done
    log "bench_server (STORE=$store) did not answer /health in $seconds s"
    cat "$out" >&2
    exit 1
}

# prime_replay_keys ID: uses each key of scripts/load/replay.lua's set for run ID once.
prime_replay_keys() {
    local k
    for k in $(seq 0 $((KEYS - 1))); do
        curl -sf -o /dev/null -X POST "$BASE/orders" -H 'Content-Type: application/json' \
            -H "Idempotency-Key: $1-replay-$k" -d '{"item":"widget","qty":1}' \
            || { log "priming key $k failed"; exit 1; }
    done
}
