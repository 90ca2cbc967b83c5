// The `Idempotency` handle is the whole router state.

#![deny(warnings)]

use axum::{Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

#[idempotent]
async fn create() -> &'static str {
    "created"
}

#[idempotent(ttl = "1h")]
async fn update(body: String) -> String {
    body
}

fn main() {
    let _app: Router = Router::new()
        .route("/things", post(create))
        .route("/things/update", post(update))
        .with_state(Idempotency::new(MemoryStore::new()));
}
