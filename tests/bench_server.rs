//! The interface of the `bench_server` example, which load harnesses rely on.

// `main` and the environment handling are not used here.
#[allow(dead_code)]
#[path = "../examples/bench_server.rs"]
mod bench_server;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore};
use tower::ServiceExt;

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, bool, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, replayed, String::from_utf8(body.to_vec()).unwrap())
}

fn order(key: &str, sleep_ms: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key);
    if let Some(ms) = sleep_ms {
        request = request.header("x-sleep-ms", ms);
    }
    request
        .body(Body::from(r#"{"item": "widget", "qty": 1}"#))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

const CREATED_1: &str = r#"{"item":"widget","order_id":1,"qty":1,"status":"created"}"#;
const CREATED_2: &str = r#"{"item":"widget","order_id":2,"qty":1,"status":"created"}"#;

#[tokio::test]
async fn without_the_attribute_every_request_runs() {
    let app = bench_server::router(None);
    assert_eq!(
        send(&app, order("k", None)).await,
        (StatusCode::CREATED, false, CREATED_1.into())
    );
    assert_eq!(
        send(&app, order("k", None)).await,
        (StatusCode::CREATED, false, CREATED_2.into())
    );
    assert_eq!(send(&app, get("/stats")).await.2, r#"{"runs":2}"#);
}

#[tokio::test]
async fn with_the_attribute_a_retry_is_replayed() {
    let app = bench_server::router(Some(Idempotency::new(MemoryStore::new())));
    assert_eq!(
        send(&app, order("k", Some("20"))).await,
        (StatusCode::CREATED, false, CREATED_1.into())
    );
    assert_eq!(
        send(&app, order("k", None)).await,
        (StatusCode::CREATED, true, CREATED_1.into())
    );
    assert_eq!(
        send(&app, order("other", None)).await,
        (StatusCode::CREATED, false, CREATED_2.into())
    );
    assert_eq!(send(&app, get("/stats")).await.2, r#"{"runs":2}"#);
}

#[tokio::test]
async fn health_and_a_bad_sleep_header() {
    for store in [None, Some(Idempotency::new(MemoryStore::new()))] {
        let app = bench_server::router(store);
        assert_eq!(send(&app, get("/health")).await.0, StatusCode::OK);
        assert_eq!(
            send(&app, order("k", Some("soon"))).await.0,
            StatusCode::BAD_REQUEST
        );
    }
}
