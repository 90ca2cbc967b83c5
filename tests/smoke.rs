use axum::{
    Json, Router,
    extract::{FromRef, State},
    http::StatusCode,
    response::IntoResponse,
    routing::post,
};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Arc<AtomicUsize>,
    idempotency: Idempotency,
}

#[derive(serde::Deserialize)]
struct Order {
    qty: u32,
}

#[idempotent(ttl = "1h", key = header)]
async fn create(State(runs): State<Arc<AtomicUsize>>, Json(o): Json<Order>) -> impl IntoResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("run {n} qty {}", o.qty))
}

#[idempotent]
async fn noargs() -> &'static str {
    "x"
}

#[idempotent]
async fn res(Json(o): Json<Order>) -> Result<String, StatusCode> {
    if o.qty == 0 {
        Err(StatusCode::BAD_REQUEST)
    } else {
        Ok("ok".into())
    }
}

#[tokio::test]
async fn smoke() {
    let state = AppState {
        runs: Default::default(),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let app = Router::new()
        .route("/o", post(create))
        .route("/n", post(noargs))
        .route("/r", post(res))
        .with_state(state.clone());
    for _ in 0..2 {
        let req = axum::http::Request::post("/o")
            .header("idempotency-key", "k1")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"qty":2}"#))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 201);
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}
