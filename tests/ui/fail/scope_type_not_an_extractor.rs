use axum::{Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, Scope, idempotent};

struct TenantId(u64);

impl Scope for TenantId {
    fn scope(&self) -> String {
        self.0.to_string()
    }
}

#[idempotent(scope = TenantId)]
async fn create() {}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(Idempotency::new(MemoryStore::new()));
}
