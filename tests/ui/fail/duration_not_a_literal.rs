use idempotent_runtime::idempotent;

// A constant or an expression is not read: the attribute needs the string itself. The
// arguments after it are still checked.
#[idempotent(ttl = std::time::Duration::from_secs(86400), key = header("Request Id"))]
async fn create() {}

fn main() {}
