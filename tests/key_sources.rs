//! Every key source and fingerprint option, through a real `Router`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, State};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Arc<AtomicUsize>,
    idempotency: Idempotency,
}

fn bump(runs: &AtomicUsize) -> String {
    format!("run {}", runs.fetch_add(1, Ordering::SeqCst) + 1)
}

#[idempotent(key = header("X-Webhook-Id"))]
async fn by_header(State(runs): State<Arc<AtomicUsize>>, _body: Bytes) -> String {
    bump(&runs)
}

#[idempotent(key = query("idempotency_key"))]
async fn by_query(State(runs): State<Arc<AtomicUsize>>, _body: Bytes) -> String {
    bump(&runs)
}

#[idempotent(key = json("/event/id"), fingerprint = exclude("/delivered_at"))]
async fn by_json(
    State(runs): State<Arc<AtomicUsize>>,
    Json(_event): Json<serde_json::Value>,
) -> String {
    bump(&runs)
}

/// The raw body, as a webhook that checks a signature over the bytes takes it.
#[idempotent(key = json("/event/id"))]
async fn by_json_raw(State(runs): State<Arc<AtomicUsize>>, body: Bytes) -> String {
    format!("{} of {} bytes", bump(&runs), body.len())
}

#[idempotent(key = json("/event/id"), required)]
async fn by_json_required(
    State(runs): State<Arc<AtomicUsize>>,
    Json(_event): Json<serde_json::Value>,
) -> String {
    bump(&runs)
}

#[idempotent(key = body, ttl = "10m")]
async fn by_body(State(runs): State<Arc<AtomicUsize>>, _body: Bytes) -> String {
    bump(&runs)
}

#[idempotent(key = body, fingerprint = exclude("/sent_at"))]
async fn by_body_excluding(State(runs): State<Arc<AtomicUsize>>, _body: Bytes) -> String {
    bump(&runs)
}

#[idempotent]
async fn by_default(State(runs): State<Arc<AtomicUsize>>, _body: Bytes) -> String {
    bump(&runs)
}

#[idempotent(fingerprint = none)]
async fn no_fingerprint(State(runs): State<Arc<AtomicUsize>>, _body: Bytes) -> String {
    bump(&runs)
}

fn app() -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let state = AppState {
        runs: runs.clone(),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let app = Router::new()
        .route("/header", post(by_header))
        .route("/query", post(by_query))
        .route("/json", post(by_json))
        .route("/json-raw", post(by_json_raw))
        .route("/json-required", post(by_json_required))
        .route("/body", post(by_body))
        .route("/body-excluding", post(by_body_excluding))
        .route("/default", post(by_default))
        .route("/none", post(no_fingerprint))
        .with_state(state);
    (app, runs)
}

/// Status, whether it was a replay, and the body.
async fn send(
    app: &Router,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, bool, String) {
    let mut request = Request::post(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Body::from(body.to_owned()))
        .expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn a_named_header_is_the_key() {
    let (app, runs) = app();
    send(&app, "/header", &[("x-webhook-id", "evt_1")], "a").await;
    let (_, replayed, body) = send(&app, "/header", &[("x-webhook-id", "evt_1")], "a").await;
    assert!(replayed);
    assert_eq!(body, "run 1");
    // The default header means nothing to this endpoint.
    send(&app, "/header", &[("idempotency-key", "evt_1")], "a").await;
    send(&app, "/header", &[("idempotency-key", "evt_1")], "a").await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_query_parameter_is_the_key() {
    let (app, runs) = app();
    send(&app, "/query?idempotency_key=k%2D1&x=1", &[], "a").await;
    let (_, replayed, _) = send(&app, "/query?x=1&idempotency_key=k-1", &[], "a").await;
    assert!(replayed, "percent-decoded, wherever it stands in the query");
    let (status, _, _) = send(&app, "/query?idempotency_key=k-1&x=2", &[], "a").await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the other parameters are part of the request"
    );
    let (status, _, _) = send(&app, "/query?idempotency_key=a&idempotency_key=b", &[], "a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "two keys");
    let (status, _, body) = send(&app, "/query?idempotency_key=a+b", &[], "a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a `+` is a space");
    assert!(body.contains("`%2B`"), "{body}");
    let (status, replayed, _) = send(&app, "/query", &[], "a").await;
    assert_eq!(
        (status, replayed),
        (StatusCode::OK, false),
        "no key: passes through"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_json_field_is_the_key_for_webhook_redeliveries() {
    let (app, runs) = app();
    let first = r#"{"event":{"id":"evt_9","type":"paid"},"delivered_at":"10:00"}"#;
    let redelivery = r#"{"delivered_at":"10:05","event":{"type":"paid","id":"evt_9"}}"#;
    let (status, _, _) = send(&app, "/json", &[JSON], first).await;
    assert_eq!(status, StatusCode::OK);
    let (_, replayed, body) = send(&app, "/json", &[JSON], redelivery).await;
    assert!(
        replayed,
        "the excluded timestamp does not make it a new request"
    );
    assert_eq!(body, "run 1");

    let tampered = r#"{"event":{"id":"evt_9","type":"refunded"},"delivered_at":"10:00"}"#;
    let (status, _, _) = send(&app, "/json", &[JSON], tampered).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let numeric = r#"{"event":{"id":17}}"#;
    send(&app, "/json", &[JSON], numeric).await;
    let (_, replayed, _) = send(&app, "/json", &[JSON], numeric).await;
    assert!(replayed, "a number is a key too");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A JSON string is the key as it is: quotes in it are its own characters, not a
/// header's quoted-string syntax.
#[tokio::test]
async fn a_json_string_key_is_taken_as_it_is() {
    let (app, runs) = app();
    for (id, run) in [(r#""\"evt_q\"""#, 1), (r#""evt_q""#, 2), (r#""\"x""#, 3)] {
        let event = format!(r#"{{"event":{{"id":{id}}}}}"#);
        let (status, replayed, body) = send(&app, "/json", &[JSON], &event).await;
        assert_eq!(
            (status, replayed, body),
            (StatusCode::OK, false, format!("run {run}")),
            "{event}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_json_key_with_the_body_taken_as_bytes() {
    let (app, runs) = app();
    let event = r#"{"event":{"id":"evt_1"}}"#;
    let (_, _, body) = send(&app, "/json-raw", &[JSON], event).await;
    assert_eq!(
        body,
        format!("run 1 of {} bytes", event.len()),
        "the body intact"
    );
    let (_, replayed, _) = send(&app, "/json-raw", &[JSON], event).await;
    assert!(replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_json_key_that_is_missing_or_unusable() {
    let (app, runs) = app();
    let (status, replayed, _) = send(&app, "/json", &[JSON], r#"{"event":{}}"#).await;
    assert_eq!(
        (status, replayed),
        (StatusCode::OK, false),
        "not required: passes"
    );
    let (status, _, _) = send(&app, "/json-required", &[JSON], r#"{"event":{}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "required");
    let (status, _, body) = send(&app, "/json", &[JSON], r#"{"event":{"id":[1]}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("/event/id"), "{body}");
    let (status, _, _) = send(&app, "/json", &[JSON], "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Beyond 64 bits both would read as 1e20: one key for two events.
    for id in ["100000000000000000001", "100000000000000000002", "17.5"] {
        let event = format!(r#"{{"event":{{"id":{id}}}}}"#);
        let (status, _, body) = send(&app, "/json", &[JSON], &event).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}");
        assert!(body.contains("as a string"), "{body}");
    }
    let largest = format!(r#"{{"event":{{"id":{}}}}}"#, u64::MAX);
    let (status, _, _) = send(&app, "/json", &[JSON], &largest).await;
    assert_eq!(status, StatusCode::OK, "a 64-bit integer is a key");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // No body is no key, not a malformed one: it passes, unless the key is required.
    let (status, replayed, body) = send(&app, "/json-raw", &[], "").await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "{body}");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let (status, _, body) = send(&app, "/json-required", &[JSON], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("missing-key"), "{body}");
}

#[tokio::test]
async fn the_body_itself_is_the_key() {
    let (app, runs) = app();
    send(&app, "/body", &[JSON], r#"{"a":1,"b":2}"#).await;
    let (_, replayed, _) = send(&app, "/body", &[JSON], r#"{"b":2, "a":1}"#).await;
    assert!(replayed, "identical submissions are deduplicated");
    let (_, replayed, _) = send(&app, "/body", &[JSON], r#"{"a":1,"b":3}"#).await;
    assert!(!replayed, "another body is another request");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_body_as_key_leaves_the_excluded_fields_out() {
    let (app, runs) = app();
    let first = r#"{"order":7,"sent_at":"10:00"}"#;
    let redelivery = r#"{"order":7,"sent_at":"10:05"}"#;
    send(&app, "/body-excluding", &[JSON], first).await;
    let (_, replayed, body) = send(&app, "/body-excluding", &[JSON], redelivery).await;
    assert!(
        replayed,
        "only the excluded field changed: the same request"
    );
    assert_eq!(body, "run 1");
    let (_, replayed, _) = send(&app, "/body-excluding", &[JSON], r#"{"order":8}"#).await;
    assert!(!replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_query_string_is_part_of_the_request() {
    let (app, runs) = app();
    let key = [("idempotency-key", "k")];
    send(&app, "/default?amount=100&currency=EUR", &key, "").await;
    let (_, replayed, _) = send(&app, "/default?currency=EUR&amount=%31%30%30", &key, "").await;
    assert!(replayed, "decoded and in any order, the same parameters");
    let (status, _, _) = send(&app, "/default?amount=1000&currency=EUR", &key, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "another amount");
    let (status, _, _) = send(&app, "/default?amount=100", &key, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a parameter less");
    // Values of one name keep their order: a list is not a set.
    let key = [("idempotency-key", "list")];
    send(&app, "/default?id=1&id=2", &key, "").await;
    let (status, _, _) = send(&app, "/default?id=2&id=1", &key, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // With the body as the key, the query tells two empty submissions apart.
    send(&app, "/body?job=a", &[], "").await;
    let (_, replayed, _) = send(&app, "/body?job=b", &[], "").await;
    assert!(!replayed, "another job");
    let (_, replayed, _) = send(&app, "/body?job=a", &[], "").await;
    assert!(replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn without_a_fingerprint_the_key_alone_decides() {
    let (app, runs) = app();
    send(&app, "/none", &[("idempotency-key", "k")], "first").await;
    let (status, replayed, body) = send(&app, "/none", &[("idempotency-key", "k")], "other").await;
    assert_eq!(status, StatusCode::OK);
    assert!(replayed, "a different body is not a 422 here");
    assert_eq!(body, "run 1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
