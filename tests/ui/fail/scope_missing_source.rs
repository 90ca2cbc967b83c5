use idempotent_runtime::idempotent;

#[idempotent(scope)]
async fn create() {}

fn main() {}
