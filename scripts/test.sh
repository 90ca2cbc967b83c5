#!/usr/bin/env bash
# The test command: brings up the servers the tests need, then runs every test of the
# workspace (unit, integration, store conformance against real Redis and Postgres,
# compile-fail UI tests and doc tests) with every feature on.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
cargo test --workspace --all-features "$@"
