use idempotent_runtime::idempotent;

#[idempotent]
#[cfg_attr(debug_assertions, tracing::instrument)]
async fn create(body: String) -> String {
    body
}

#[idempotent]
#[cfg_attr(all(), allow(unused), axum::debug_handler)]
async fn update(body: String) -> String {
    body
}

fn main() {}
