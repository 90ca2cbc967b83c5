use axum::Json;
use idempotent_runtime::idempotent;

#[idempotent]
#[tracing::instrument]
async fn create(Json(n): Json<u32>) -> String {
    n.to_string()
}

fn main() {}
