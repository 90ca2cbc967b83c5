use axum::extract::{FromRef, State};
use axum::{Router, routing::post};
use idempotent_runtime::idempotent;

#[derive(Clone, FromRef)]
struct AppState {
    db: Db,
}

#[derive(Clone)]
struct Db;

#[idempotent]
async fn create(State(_db): State<Db>) -> &'static str {
    "created"
}

fn main() {
    let _app: Router = Router::new()
        .route("/orders", post(create))
        .with_state(AppState { db: Db });
}
