use idempotent_runtime::idempotent;

#[idempotent(ttl = "0s")]
async fn create() {}

fn main() {}
