use idempotent_runtime::idempotent;

#[idempotent(store = "2xx,6xx")]
async fn create() {}

fn main() {}
