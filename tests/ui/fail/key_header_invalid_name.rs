use idempotent_runtime::idempotent;

#[idempotent(key = header("Request Id"))]
async fn create() {}

fn main() {}
