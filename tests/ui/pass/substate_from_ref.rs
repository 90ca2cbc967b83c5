// A state of the user's own, holding the `Idempotency` next to sub-states that handlers
// extract with `State<SubState>`, all reached through `#[derive(FromRef)]`.

#![deny(warnings)]

use axum::extract::{FromRef, Path, State};
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use serde::Deserialize;

#[derive(Clone, FromRef)]
struct AppState {
    db: Db,
    mailer: Mailer,
    idempotency: Idempotency,
}

#[derive(Clone)]
struct Db;

#[derive(Clone)]
struct Mailer;

#[derive(Deserialize)]
struct Order {
    quantity: u32,
}

#[idempotent(ttl = "24h", key = header)]
async fn create(State(_db): State<Db>, Json(order): Json<Order>) -> String {
    order.quantity.to_string()
}

#[idempotent]
async fn notify(
    State(_db): State<Db>,
    State(_mailer): State<Mailer>,
    Path(id): Path<u64>,
) -> String {
    id.to_string()
}

#[idempotent]
async fn whole_state(State(state): State<AppState>) -> String {
    let AppState { db: _, mailer: _, idempotency } = state;
    format!("{idempotency:?}")
}

fn main() {
    let state = AppState {
        db: Db,
        mailer: Mailer,
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .route("/orders/{id}/notify", post(notify))
        .route("/state", post(whole_state))
        .with_state(state);
}
