//! The cost of `#[idempotent]` on the memory store, against the same handler without it.
//!
//! One group, `memory`, three measurements of a whole request through `Router` and
//! `oneshot` (JSON body in, JSON `201` out, body read to the end):
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Runs(Arc<AtomicU64>);

#[derive(Clone, FromRef)]
struct AppState {
    runs: Runs,
    idempotency: Idempotency,
}

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    qty: i64,
}

#[derive(Serialize)]
struct Created {
    item: String,
    order_id: u64,
    qty: i64,
    status: &'static str,
}

async fn create(
    State(runs): State<Runs>,
    Json(order): Json<NewOrder>,
) -> (StatusCode, Json<Created>) {
    let order_id = runs.0.fetch_add(1, Ordering::Relaxed) + 1;
    let created = Created {
        item: order.item,
        order_id,
        qty: order.qty,
        status: "created",
    };
    (StatusCode::CREATED, Json(created))
}

// A short TTL keeps the store at a steady size over millions of new keys, the way a
// long-running service's store is, with the expiry sweep included in the measurement.
#[idempotent(ttl = "10s", key = header, required)]
async fn create_idempotent(
    runs: State<Runs>,
    order: Json<NewOrder>,
) -> (StatusCode, Json<Created>) {
    create(runs, order).await
}

fn app(idempotent: bool) -> Router {
    let state = AppState {
        runs: Runs::default(),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let route = if idempotent {
        post(create_idempotent)
    } else {
        post(create)
    };
    Router::new().route("/orders", route).with_state(state)
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
