use axum::extract::FromRequestParts;
use axum::http::{StatusCode, request::Parts};
use idempotent_runtime::idempotent;

struct AuthUser {
    tenant_id: u64,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = StatusCode;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, StatusCode> {
        Ok(AuthUser { tenant_id: 1 })
    }
}

#[idempotent(scope = AuthUser)]
async fn create(user: AuthUser) -> String {
    user.tenant_id.to_string()
}

fn main() {}
