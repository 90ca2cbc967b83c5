use idempotent_runtime::idempotent;

#[idempotent(key = body, fingerprint = none)]
async fn create(body: String) -> String {
    body
}

fn main() {}
