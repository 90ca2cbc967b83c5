use idempotent_runtime::idempotent;

#[idempotent(scope = 42)]
async fn create() {}

fn main() {}
