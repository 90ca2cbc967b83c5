use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use serde::de::DeserializeOwned;

/// An extractor of the application's own that reads the body: the attribute cannot
/// know it by its name.
struct Validated<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Validated<T> {
    type Rejection = StatusCode;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state)
            .await
            .map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?;
        Ok(Self(value))
    }
}

#[idempotent]
async fn create(Validated(order): Validated<serde_json::Value>, _headers: HeaderMap) -> String {
    order.to_string()
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(Idempotency::new(MemoryStore::new()));
}
