use idempotent_runtime::idempotent;

#[idempotent]
async unsafe fn unsafe_handler() {}

#[idempotent]
async extern "C" fn extern_handler() {}

#[idempotent]
const async fn const_handler() {}

#[idempotent]
async fn where_clause() -> String
where
    String: Clone,
{
    String::new()
}

fn main() {}
