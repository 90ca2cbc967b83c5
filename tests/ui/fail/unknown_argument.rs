use idempotent_runtime::idempotent;

#[idempotent(cache = true)]
async fn create() {}

fn main() {}
