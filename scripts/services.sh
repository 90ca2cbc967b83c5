#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on loopback: Redis on 6379 and
# Postgres on 5432 (user postgres, trust auth, database `test`). Starts them if they are
# stopped, installs them with apt-get if they are missing, and fails loudly otherwise.
# Also installs nats-server, which the queue-consumer test starts privately.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "must run as root to $1"; exit 1; }; }

apt_updated=""
apt_install() {
    need_root "install $*"
    if [ -z "$apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

wait_for() { # name, command...
    local name=$1; shift
    for _ in $(seq 1 50); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "$name is still unreachable after 10 s"
    return 1
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools
    if ! redis_up; then
        log "starting redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
    fi
    wait_for redis redis_up || { log "FATAL: cannot reach Redis on 127.0.0.1:6379"; exit 1; }
}

pg_up() { psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' 2>/dev/null | grep -q 1; }

ensure_postgres() {
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        log "starting postgres $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    fi
    wait_for postgres pg_isready -h 127.0.0.1 -p 5432 -q || { log "FATAL: Postgres is not accepting connections on 127.0.0.1:5432"; exit 1; }
    if ! pg_up; then
        # A fresh install: trust loopback connections and create the `test` database.
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        if [ -w "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
            log "configuring trust auth on loopback"
            sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
            pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2 || true
        fi
        su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\"" 2>/dev/null | grep -q 1 \
            || su postgres -c "createdb test" >&2 || true
    fi
    wait_for postgres pg_up || { log "FATAL: cannot log in to Postgres as postgres@127.0.0.1/test"; exit 1; }
}

ensure_nats() {
    command -v nats-server >/dev/null || apt_install nats-server
    command -v nats-server >/dev/null || { log "FATAL: nats-server is not installed"; exit 1; }
}

ensure_redis
ensure_postgres
ensure_nats
log "redis and postgres are up; nats-server is installed"
