use axum::Json;
use idempotent_runtime::idempotent;

#[idempotent]
async fn create<T: serde::de::DeserializeOwned>(Json(_value): Json<T>) {}

fn main() {}
