use idempotent_runtime::idempotent;

#[idempotent]
const LIMIT: u32 = 10;

fn main() {}
