use axum::http::HeaderMap;
use idempotent_runtime::idempotent;

#[idempotent]
async fn create(headers: &HeaderMap, _body: &'static str) {
    let _ = headers;
}

fn main() {}
