// Attributes on an argument that keep it are allowed, and apply to its binding.
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use idempotent_runtime::{idempotent, Idempotency, MemoryStore};

#[idempotent]
#[deny(unused_variables)]
async fn create(
    #[cfg_attr(debug_assertions, allow(unused_variables))] headers: HeaderMap,
    #[allow(unused_variables)] body: String,
) -> &'static str {
    "created"
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(Idempotency::new(MemoryStore::new()));
}
