use idempotent_runtime::idempotent;

#[idempotent(ttl = 10)]
async fn create() {}

fn main() {}
