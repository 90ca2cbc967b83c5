use idempotent_runtime::idempotent;

// The first `ttl` is invalid: the repeat is still reported.
#[idempotent(ttl = "one day", key = header, ttl = "1h")]
async fn create() {}

fn main() {}
