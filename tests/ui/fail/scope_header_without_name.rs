use idempotent_runtime::idempotent;

#[idempotent(scope = header())]
async fn create() {}

fn main() {}
