use idempotent_runtime::idempotent;

#[idempotent]
pub struct Order;

fn main() {}
