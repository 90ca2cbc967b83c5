use axum::Json;
use idempotent_runtime::idempotent;

#[idempotent]
#[idempotent(ttl = "1h")]
async fn create(Json(n): Json<u32>) -> String {
    n.to_string()
}

fn main() {}
