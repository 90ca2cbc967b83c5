// A handler that is an associated function of an `impl` block, using `Self`.

#![deny(warnings)]

use axum::extract::{FromRef, State};
use axum::{Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

#[derive(Clone, FromRef)]
struct Orders {
    prefix: Prefix,
    idempotency: Idempotency,
}

#[derive(Clone)]
struct Prefix(&'static str);

impl Orders {
    fn name(prefix: &Prefix, id: u32) -> String {
        format!("{}-{id}", prefix.0)
    }

    #[idempotent(ttl = "1h")]
    pub async fn create(State(orders): State<Self>) -> String {
        Self::name(&orders.prefix, 1)
    }

    #[idempotent]
    async fn cancel(State(prefix): State<Prefix>) -> String {
        Self::name(&prefix, 2)
    }

    fn router(self) -> Router {
        Router::new()
            .route("/orders", post(Self::create))
            .route("/orders/cancel", post(Self::cancel))
            .with_state(self)
    }
}

fn main() {
    let orders = Orders {
        prefix: Prefix("order"),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let _app: Router = orders.router();
}
