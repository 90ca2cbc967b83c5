// The runtime reached through another path (a renamed dependency, or a re-export in a
// crate of the user's own) with `crate = ".."`.

#![deny(warnings)]

use axum::extract::FromRequestParts;
use axum::http::{StatusCode, request::Parts};
use axum::response::IntoResponse;
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, Scope};

mod platform {
    pub use idempotent_runtime as idempotency;
}

#[platform::idempotency::idempotent(crate = "platform::idempotency", ttl = "1h", key = json("/id"))]
async fn create(Json(event): Json<serde_json::Value>) -> impl IntoResponse {
    (StatusCode::CREATED, Json(event))
}

struct Tenant(String);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, StatusCode> {
        let tenant = parts.headers.get("x-tenant").and_then(|v| v.to_str().ok());
        tenant.map(|t| Tenant(t.to_owned())).ok_or(StatusCode::UNAUTHORIZED)
    }
}

impl Scope for Tenant {
    fn scope(&self) -> String {
        self.0.clone()
    }
}

#[platform::idempotency::idempotent(
    crate = "crate::platform::idempotency",
    lease = "30s",
    scope = Tenant,
    required
)]
async fn cancel() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn main() {
    let _app: Router = Router::new()
        .route("/events", post(create))
        .route("/cancel", post(cancel))
        .with_state(Idempotency::new(MemoryStore::new()));
}
