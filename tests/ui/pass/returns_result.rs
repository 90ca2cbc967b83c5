// `Result<_, _>` returns, with `?` converting the error through `From`.

#![deny(warnings)]

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

struct AppError(String);

impl From<std::num::ParseIntError> for AppError {
    fn from(err: std::num::ParseIntError) -> Self {
        Self(err.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (StatusCode::UNPROCESSABLE_ENTITY, self.0).into_response()
    }
}

#[idempotent]
async fn parse(body: String) -> Result<Json<u64>, AppError> {
    let n: u64 = body.trim().parse()?;
    if n == 0 {
        return Err(AppError("zero".into()));
    }
    Ok(Json(n))
}

#[idempotent]
async fn status(body: String) -> Result<String, StatusCode> {
    let n: u64 = body.parse().map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(n.to_string())
}

fn main() {
    let _app: Router = Router::new()
        .route("/parse", post(parse))
        .route("/status", post(status))
        .with_state(Idempotency::new(MemoryStore::new()));
}
