use idempotent_runtime::idempotent;

#[idempotent(store = 2xx)]
async fn create() {}

#[idempotent(store = 201)]
async fn update() {}

#[idempotent(store)]
async fn delete() {}

#[idempotent(store = [2xx], ttl = "0s")]
async fn refund() {}

fn main() {}
