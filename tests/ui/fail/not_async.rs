use idempotent_runtime::idempotent;

#[idempotent]
fn create() -> &'static str {
    "created"
}

fn main() {}
