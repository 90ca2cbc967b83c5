use idempotent_runtime::idempotent;

#[idempotent(ttl = "one day")]
async fn create() {}

fn main() {}
