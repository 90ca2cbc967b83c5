// The generated code reaches the runtime only through the path given.

use idempotent_runtime::idempotent;

#[idempotent(crate = "idempotency")]
async fn create() {}

fn main() {}
