use idempotent_runtime::idempotent;

#[idempotent(key)]
async fn no_source() {}

#[idempotent(key = "X-Request-Id")]
async fn quoted() {}

#[idempotent(key = "body")]
async fn quoted_word() {}

#[idempotent(key = "/event/id")]
async fn quoted_pointer() {}

#[idempotent(key = "")]
async fn quoted_nothing() {}

#[idempotent(key = query(""))]
async fn empty_query_name() {}

#[idempotent(key = query)]
async fn query_without_name() {}

#[idempotent(key = body("/id"))]
async fn body_with_argument() {}

fn main() {}
