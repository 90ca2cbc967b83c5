use idempotent_runtime::idempotent;

struct Order;

#[idempotent]
async fn create() -> Order {
    Order
}

fn main() {}
