use idempotent_runtime::idempotent;

#[idempotent(idempotent::ttl = "1h")]
async fn create() {}

fn main() {}
