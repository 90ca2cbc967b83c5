use axum::extract::FromRequestParts;
use idempotent_runtime::idempotent;

#[idempotent]
async fn create(_user: impl FromRequestParts<()>) {}

fn main() {}
