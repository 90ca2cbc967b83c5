use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

struct Order;

#[idempotent]
async fn create(_order: Order, Json(value): Json<serde_json::Value>) -> String {
    value.to_string()
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(Idempotency::new(MemoryStore::new()));
}
