use idempotent_runtime::idempotent;

#[idempotent(tll = "24h")]
async fn create() {}

fn main() {}
