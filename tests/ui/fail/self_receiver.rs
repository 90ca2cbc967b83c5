use idempotent_runtime::idempotent;

struct Orders;

impl Orders {
    #[idempotent]
    async fn create(&self) {}
}

fn main() {}
