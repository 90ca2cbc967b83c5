// The runtime reached through another path (a renamed dependency, or a re-export in a
// crate of the user's own) with `crate = ".."`.

#![deny(warnings)]

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore};

mod platform {
    pub use idempotent_runtime as idempotency;
}

#[platform::idempotency::idempotent(crate = "platform::idempotency", ttl = "1h", key = json("/id"))]
async fn create(Json(event): Json<serde_json::Value>) -> impl IntoResponse {
    (StatusCode::CREATED, Json(event))
}

#[platform::idempotency::idempotent(crate = "crate::platform::idempotency")]
async fn cancel() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn main() {
    let _app: Router = Router::new()
        .route("/events", post(create))
        .route("/cancel", post(cancel))
        .with_state(Idempotency::new(MemoryStore::new()));
}
