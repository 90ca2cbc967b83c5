use axum::http::HeaderMap;
use idempotent_runtime::idempotent;

#[idempotent]
async fn create(#[cfg(debug_assertions)] _headers: HeaderMap, body: String) -> String {
    body
}

#[idempotent]
async fn update(
    #[cfg_attr(debug_assertions, cfg(any()))] _headers: HeaderMap,
    body: String,
) -> String {
    body
}

fn main() {}
