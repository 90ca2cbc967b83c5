use idempotent_runtime::idempotent;

#[idempotent(ttl = "1m", lease = "5m")]
async fn create() {}

fn main() {}
