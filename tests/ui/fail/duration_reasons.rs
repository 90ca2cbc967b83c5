use idempotent_runtime::idempotent;

// `M` is months to humantime; a TTL of months is almost always a typo for minutes.
#[idempotent(ttl = "5M")]
async fn months() {}

#[idempotent(ttl = "1h 30M")]
async fn months_after_hours() {}

#[idempotent(ttl = "5 minuts")]
async fn misspelt_unit() {}

#[idempotent(lease = "1h 30")]
async fn number_without_unit() {}

#[idempotent(ttl = "24H")]
async fn upper_case_unit() {}

#[idempotent(ttl = "99999999999999999999d")]
async fn too_long() {}

fn main() {}
