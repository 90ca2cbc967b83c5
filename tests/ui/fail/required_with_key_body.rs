use idempotent_runtime::idempotent;

#[idempotent(key = body, required)]
async fn create(body: String) -> String {
    body
}

fn main() {}
