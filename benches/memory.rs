//! The cost of `#[idempotent]` on the memory store, against the same handler without it.
//!
//! One group, `memory`, three measurements of a whole request through `Router` and
//! `oneshot` (JSON body in, JSON `201` out, body read to the end), on the handler and
//! routes of the `bench_server` example, which the HTTP load test (`scripts/load.sh`)
//! serves; its attributed route keeps responses for 24 h, as a service would, so the
//! store grows over a run:
//!
//! - `bare`: the handler without the attribute;
//! - `first_execution`: with the attribute, a new key every iteration (claim, run,
//!   capture, complete);
//! - `replay`: with the attribute, the same key every iteration (claim finds the
//!   completed record and replays it; the handler does not run).
//!
//! Divide a time by `bare` to get the ratio. Run with
//! `cargo bench --bench memory` (or `-- --quick` for a rough figure).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use criterion::{Criterion, criterion_group, criterion_main};
use idempotent_runtime::{Idempotency, MemoryStore};

mod common;
use common::{bench_server, call, runtime};

fn app(idempotent: bool) -> Router {
    bench_server::router(idempotent.then(|| Idempotency::new(MemoryStore::new())))
}

fn memory(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("memory");

    let bare = app(false);
    let next = AtomicU64::new(0);
    group.bench_function("bare", |b| {
        b.to_async(&runtime)
            .iter(|| call(&bare, next.fetch_add(1, Ordering::Relaxed)));
    });

    let idempotent = app(true);
    group.bench_function("first_execution", |b| {
        b.to_async(&runtime)
            .iter(|| call(&idempotent, next.fetch_add(1, Ordering::Relaxed)));
    });

    let replayed = app(true);
    runtime.block_on(call(&replayed, 0));
    group.bench_function("replay", |b| {
        b.to_async(&runtime).iter(|| call(&replayed, 0));
    });

    group.finish();
}

criterion_group!(benches, memory);
criterion_main!(benches);
