use idempotent_runtime::idempotent;

#[idempotent(ttl = "1ns")]
async fn create() {}

#[idempotent(ttl = "1h", lease = "999us")]
async fn update() {}

fn main() {}
