// `impl IntoResponse` returns, including an `impl Trait` nested in another type.

#![deny(warnings)]

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

#[idempotent]
async fn created(Json(value): Json<serde_json::Value>) -> impl IntoResponse {
    if value.is_null() {
        return (StatusCode::BAD_REQUEST, Json(value));
    }
    (StatusCode::CREATED, Json(value))
}

#[idempotent]
async fn nested() -> Result<impl IntoResponse, StatusCode> {
    Ok("nested")
}

#[idempotent]
async fn precise_capture() -> impl IntoResponse + use<> {
    "captures nothing"
}

#[idempotent]
async fn response() -> Response {
    StatusCode::ACCEPTED.into_response()
}

#[idempotent]
async fn unit() {}

fn main() {
    let _app: Router = Router::new()
        .route("/created", post(created))
        .route("/nested", post(nested))
        .route("/precise", post(precise_capture))
        .route("/response", post(response))
        .route("/unit", post(unit))
        .with_state(Idempotency::new(MemoryStore::new()));
}
