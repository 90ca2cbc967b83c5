use idempotent_runtime::idempotent;

#[idempotent(key = header(X-Request-Id))]
async fn unquoted_header() {}

#[idempotent(key = 5, ttl = "0s")]
async fn number() {}

#[idempotent(fingerprint = exclude(/sent_at))]
async fn unquoted_pointer() {}

#[idempotent(scope = header(Authorization), lease = "1x")]
async fn unquoted_scope() {}

#[idempotent(store = 2xx, 409, ttl = "1h", lease = "0")]
async fn unquoted_store_list() {}

#[idempotent(key = header "X-Request-Id", lease = "2")]
async fn string_after_the_word() {}

#[idempotent(key = json["/id"], ttl = "3")]
async fn brackets() {}

fn main() {}
