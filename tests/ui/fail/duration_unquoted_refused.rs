use idempotent_runtime::idempotent;

// Unquoted durations that quoting alone would not fix: the reason, not `"0s"` or `"5M"`.
#[idempotent(ttl = 0)]
async fn zero() {}

#[idempotent(lease = 5M)]
async fn months() {}

fn main() {}
