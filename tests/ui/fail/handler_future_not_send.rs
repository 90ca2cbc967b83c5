use std::sync::Mutex;

use idempotent_runtime::idempotent;

static ORDERS: Mutex<u32> = Mutex::new(0);

async fn save() {}

#[idempotent]
async fn create() -> String {
    let orders = ORDERS.lock().unwrap();
    save().await;
    orders.to_string()
}

fn main() {}
