use idempotent_runtime::idempotent;

#[idempotent(ttl = "24h", key = header, ttl = "1h")]
async fn create() {}

fn main() {}
