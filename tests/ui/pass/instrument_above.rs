//! `#[tracing::instrument]` above `#[idempotent]` sees the handler's own arguments.

use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

#[tracing::instrument]
#[idempotent]
async fn create(Json(n): Json<u32>) -> String {
    n.to_string()
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(Idempotency::new(MemoryStore::new()));
}
