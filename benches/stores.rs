//! The cost of `#[idempotent]` on the shared stores, Redis and Postgres, against the same
//! handler without it, measured in the same run.
//!
//! One group per store, `redis` and `postgres`, each with the measurements of the
//! `memory` bench (a whole request through `Router` and `oneshot`, on the handler and
//! routes of the `bench_server` example) and one more:
//!
//! - `round_trip`: one command to the server and its answer, with no request around it
//!   (a `GET` through a `ConnectionManager`, a `SELECT 1` on the pool), for scale;
//! - `bare`: the handler without the attribute, measured again in each group so that
//!   every ratio is taken within one run;
//! - `first_execution`: a new key every iteration (claim, run, capture, complete: two
//!   round trips to the server);
//! - `replay`: the same key every iteration (one round trip; the handler does not run).
//!
//! One request is in flight at a time, so a time here is a request's latency, round
//! trips to the server included; `scripts/load.sh` measures throughput, with many
//! requests in flight sharing each round trip.
//!
//! The servers are those of `REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`); a group whose
//! server cannot be reached is skipped with a message. Records go under a Redis key
//! prefix and a Postgres schema of the run's own, removed when the group ends. Run with
//! `cargo bench --features redis,postgres --bench stores` (or `-- --quick` for a rough
//! figure, or `-- redis` for one group).

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use idempotent_runtime::redis::{self, AsyncCommands};
use idempotent_runtime::sqlx::{self, postgres::PgPoolOptions};
use idempotent_runtime::{Idempotency, PostgresStore, RedisStore, Store};
use tokio::runtime::Runtime;

mod common;
use common::{bench_server, call, runtime};

// `remove_prefix`; the rest serves the tests.
#[allow(dead_code)]
#[path = "../tests/support/redis_commands.rs"]
mod redis_commands;

/// Measures `round_trip`, `bare`, `first_execution` and `replay` in group `name`, the
/// last two on `store`.
fn measure<F: Future<Output = ()>>(
    c: &mut Criterion,
    runtime: &Runtime,
    name: &str,
    store: impl Store,
    round_trip: impl Fn() -> F,
) {
    let mut group = c.benchmark_group(name);

    group.bench_function("round_trip", |b| b.to_async(runtime).iter(&round_trip));

    let bare = bench_server::router(None);
    let next = AtomicU64::new(0);
    group.bench_function("bare", |b| {
        b.to_async(runtime)
            .iter(|| call(&bare, next.fetch_add(1, Ordering::Relaxed)));
    });

    let idempotent = bench_server::router(Some(Idempotency::new(store)));
    group.bench_function("first_execution", |b| {
        b.to_async(runtime)
            .iter(|| call(&idempotent, next.fetch_add(1, Ordering::Relaxed)));
    });

    // A key no first execution used.
    let replayed = u64::MAX;
    runtime.block_on(call(&idempotent, replayed));
    group.bench_function("replay", |b| {
        b.to_async(runtime).iter(|| call(&idempotent, replayed));
    });

    group.finish();
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A name of this run's own, for its Redis prefix and its Postgres schema.
fn run_name() -> String {
    format!("idempotent_bench_{}", std::process::id())
}

fn redis(c: &mut Criterion) {
    let runtime = runtime();
    let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let prefix = run_name();
    let opened = runtime.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        let manager = redis::aio::ConnectionManager::new(client).await?;
        let store = RedisStore::new(manager.clone()).with_prefix(prefix.as_str());
        store.load_scripts().await?;
        Ok::<_, Box<dyn std::error::Error>>((manager, store))
    });
    let (manager, store) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            eprintln!("skipping the redis group: cannot use Redis at {url}: {err}");
            return;
        }
    };
    let round_trip = || {
        let mut manager = manager.clone();
        async move {
            let _: Option<Vec<u8>> = manager.get("idempotent-bench-absent").await.unwrap();
        }
    };
    measure(c, &runtime, "redis", store, round_trip);
    // The records are kept for a day.
    let (mut manager, records) = (manager, format!("{prefix}:"));
    if let Err(err) = runtime.block_on(redis_commands::remove_prefix(&mut manager, &records)) {
        eprintln!("could not remove the records under `{prefix}` from Redis: {err}");
    }
}

fn postgres(c: &mut Criterion) {
    let runtime = runtime();
    let url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let schema = run_name();
    let opened = runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        let store = PostgresStore::new(pool).with_schema(&schema)?;
        store.migrate().await?;
        Ok::<_, Box<dyn std::error::Error>>(store)
    });
    let store = match opened {
        Ok(store) => store,
        Err(err) => {
            eprintln!("skipping the postgres group: cannot use Postgres at {url}: {err}");
            return;
        }
    };
    let pool = store.pool().clone();
    let round_trip = || async {
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    };
    measure(c, &runtime, "postgres", store, round_trip);
    // The schema is this run's own name, made above: nothing in it comes from outside.
    let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
    let dropped = runtime.block_on(sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool));
    if let Err(err) = dropped {
        eprintln!("could not drop the schema `{schema}` from Postgres: {err}");
    }
}

criterion_group!(benches, redis, postgres);
criterion_main!(benches);
