//! What the benches share: the load test's handler and router, so that both measure
//! the same code, and one request through them.

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tower::ServiceExt;

// `main` and the environment handling are not used here.
#[allow(dead_code)]
#[path = "../../examples/bench_server.rs"]
pub mod bench_server;

/// `POST /orders` with the load test's body and the key `bench-{key}`.
pub fn request(key: u64) -> Request<Body> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", format!("bench-{key}"))
        .body(Body::from(r#"{"item":"widget","qty":1}"#))
        .unwrap()
}

/// Sends [`request`] through `app` and reads its `201` answer to the end.
pub async fn call(app: &Router, key: u64) {
    let response = app.clone().oneshot(request(key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

/// A current-thread runtime: one request at a time, on the bench's own thread.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
