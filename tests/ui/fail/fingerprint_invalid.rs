use idempotent_runtime::idempotent;

#[idempotent(fingerprint = exlude("/sent_at"))]
async fn misspelt() {}

#[idempotent(fingerprint = "none")]
async fn quoted() {}

#[idempotent(fingerprint)]
async fn no_value() {}

#[idempotent(fingerprint = exclude())]
async fn no_pointer() {}

#[idempotent(fingerprint = exclude)]
async fn no_parentheses() {}

#[idempotent(fingerprint = none("/sent_at"))]
async fn none_with_argument() {}

#[idempotent(fingerprint = exclude("sent_at"))]
async fn not_a_pointer() {}

fn main() {}
