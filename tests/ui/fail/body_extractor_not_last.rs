use axum::http::HeaderMap;
use axum::{Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

#[idempotent]
async fn create(body: String, headers: HeaderMap) -> String {
    format!("{body} {}", headers.len())
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(Idempotency::new(MemoryStore::new()));
}
