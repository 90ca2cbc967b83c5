// Every argument of the attribute, alone and combined.

#![deny(warnings)]

use axum::extract::{FromRequestParts, Query};
use axum::http::{StatusCode, request::Parts};
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, Scope, idempotent};
use serde::Deserialize;

#[derive(Deserialize)]
struct Event {
    id: String,
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

mod auth {
    pub struct User<T>(pub T);
}

impl<S: Send + Sync> FromRequestParts<S> for auth::User<u64> {
    type Rejection = StatusCode;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, StatusCode> {
        Ok(auth::User(1))
    }
}

impl Scope for auth::User<u64> {
    fn scope(&self) -> String {
        self.0.to_string()
    }
}

#[idempotent(ttl = "24h")]
async fn ttl() {}

#[idempotent(lease = "30s")]
async fn lease() {}

#[idempotent(ttl = "1h 30m", lease = "500ms")]
async fn ttl_and_lease() {}

#[idempotent(key = header)]
async fn key_header() {}

#[idempotent(key = header("X-Request-Id"))]
async fn key_named_header() {}

#[idempotent(key = query("idempotency_key"))]
async fn key_query(Query(_q): Query<std::collections::HashMap<String, String>>) {}

#[idempotent(key = json("/event/id"))]
async fn key_json(Json(event): Json<Event>) -> String {
    event.id
}

#[idempotent(key = json("/a~1b/c~0d/0"))]
async fn key_json_escaped(Json(value): Json<serde_json::Value>) -> String {
    value.to_string()
}

#[idempotent(key = json("/event/id"))]
async fn key_json_optional(event: Option<Json<Event>>) -> String {
    event.map(|Json(event)| event.id).unwrap_or_default()
}

#[idempotent(key = body)]
async fn key_body(body: String) -> String {
    body
}

#[idempotent(required)]
async fn required() {}

#[idempotent(scope = header("Authorization"))]
async fn scope_header() {}

#[idempotent(scope = Tenant)]
async fn scope_extractor() {}

#[idempotent(scope = auth::User<u64>, required)]
async fn scope_extractor_path(_tenant: Tenant) {}

#[idempotent(store = "2xx,4xx")]
async fn store_classes() {}

#[idempotent(store = "2xx, 409, 5XX")]
async fn store_codes() {}

#[idempotent(fingerprint = body)]
async fn fingerprint_body() {}

#[idempotent(fingerprint = none)]
async fn fingerprint_none() {}

#[idempotent(fingerprint = exclude("/sent_at", "/nonce"))]
async fn fingerprint_exclude(Json(_v): Json<serde_json::Value>) {}

#[idempotent(
    ttl = "7d",
    lease = "1m",
    key = header("X-Webhook-Id"),
    required,
    scope = Tenant,
    store = "2xx,4xx",
    fingerprint = exclude("/sent_at"),
    crate = "::idempotent_runtime",
)]
async fn all_at_once(Json(_v): Json<serde_json::Value>) {}

fn main() {
    let _app: Router = Router::new()
        .route("/ttl", post(ttl))
        .route("/lease", post(lease))
        .route("/ttl_and_lease", post(ttl_and_lease))
        .route("/key_header", post(key_header))
        .route("/key_named_header", post(key_named_header))
        .route("/key_query", post(key_query))
        .route("/key_json", post(key_json))
        .route("/key_json_escaped", post(key_json_escaped))
        .route("/key_json_optional", post(key_json_optional))
        .route("/key_body", post(key_body))
        .route("/required", post(required))
        .route("/scope_header", post(scope_header))
        .route("/scope_extractor", post(scope_extractor))
        .route("/scope_extractor_path", post(scope_extractor_path))
        .route("/store_classes", post(store_classes))
        .route("/store_codes", post(store_codes))
        .route("/fingerprint_body", post(fingerprint_body))
        .route("/fingerprint_none", post(fingerprint_none))
        .route("/fingerprint_exclude", post(fingerprint_exclude))
        .route("/all_at_once", post(all_at_once))
        .with_state(Idempotency::new(MemoryStore::new()));
}
