use idempotent_runtime::idempotent;

#[idempotent(crate = idempotency)]
async fn unquoted() {}

#[idempotent(crate = "not a path")]
async fn not_a_path() {}

#[idempotent(crate = platform::idempotency)]
async fn unquoted_path() {}

#[idempotent(crate = "idempotency<T>")]
async fn generic() {}

#[idempotent(crate)]
async fn no_value() {}

#[idempotent(crate = "idempotent_runtime", crate = "idempotent_runtime")]
async fn repeated() {}

fn main() {}
