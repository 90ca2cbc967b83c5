use idempotent_runtime::idempotent;

#[idempotent(key = heder)]
async fn create() {}

fn main() {}
