use idempotent_runtime::idempotent;

// The unit is kept in the suggestion: `"500ms"`, not `"500s"`.
#[idempotent(lease = 500ms)]
async fn create() {}

#[idempotent(ttl = 3fortnights)]
async fn update() {}

fn main() {}
