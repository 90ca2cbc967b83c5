use idempotent_runtime::idempotent;

#[idempotent(key = header(X-Request-Id))]
async fn unquoted_header() {}

#[idempotent(key = 5, ttl = "0s")]
async fn number() {}

#[idempotent(fingerprint = exclude(/sent_at))]
async fn unquoted_pointer() {}

#[idempotent(scope = header(Authorization), lease = "1x")]
async fn unquoted_scope() {}

fn main() {}
