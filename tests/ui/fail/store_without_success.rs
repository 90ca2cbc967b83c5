use idempotent_runtime::idempotent;

#[idempotent(store = "409")]
async fn create() {}

#[idempotent(store = "4xx, 5xx")]
async fn update() {}

fn main() {}
