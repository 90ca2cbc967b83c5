use axum::Json;
use idempotent_runtime::idempotent;

#[idempotent(key = json("event.id"))]
async fn webhook(Json(event): Json<serde_json::Value>) -> String {
    event.to_string()
}

fn main() {}
