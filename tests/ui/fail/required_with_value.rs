use idempotent_runtime::idempotent;

#[idempotent(required = true)]
async fn create() {}

fn main() {}
