use idempotent_runtime::idempotent;

#[idempotent(key = json("/event/id"))]
async fn webhook(body: String) -> String {
    body
}

fn main() {}
