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

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore};
use tower::ServiceExt;

// The handler and router of the load test, so that both measure the same code.
// `main` and the environment handling are not used here.
#[allow(dead_code)]
#[path = "../examples/bench_server.rs"]
mod bench_server;

fn app(idempotent: bool) -> Router {
    bench_server::router(idempotent.then(|| Idempotency::new(MemoryStore::new())))
}

fn request(key: u64) -> Request<Body> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", format!("bench-{key}"))
        .body(Body::from(r#"{"item":"widget","qty":1}"#))
        .unwrap()
}

async fn call(app: &Router, key: u64) {
    let response = app.clone().oneshot(request(key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

fn memory(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
