use axum::Json;
use idempotent_runtime::{Idempotency, idempotent};

#[idempotent]
#[axum::debug_handler(state = Idempotency)]
async fn create(Json(n): Json<u32>) -> String {
    n.to_string()
}

fn main() {}
