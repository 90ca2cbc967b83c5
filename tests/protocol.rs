//! The per-request protocol, through a real `Router`: every outcome a client can see.
//!
//! The tests that race a lease against a handler run on paused time (`start_paused`):
//! the memory store and the lease renewals read tokio's clock, so a busy machine cannot
//! stretch a 100 ms lease, and the timings are exact.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::{Json, Router};
use futures::StreamExt;
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use support::broken::Broken;
use support::flaky::{Fault, Flaky};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Runs,
    idempotency: Idempotency,
}

/// How often the handlers ran.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[idempotent]
async fn create(State(runs): State<Runs>, body: Bytes) -> impl IntoResponse {
    let n = runs.bump();
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, HeaderValue::from_static("/orders/7"));
    headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    headers.append("x-trace", HeaderValue::from_static("a"));
    headers.append("x-trace", HeaderValue::from_static("b"));
    headers.insert(
        "x-binary",
        HeaderValue::from_bytes(&[0xfe, b'z']).expect("a valid opaque header value"),
    );
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("session=s3cret"),
    );
    let body = format!("run {n}: {}", String::from_utf8_lossy(&body));
    (StatusCode::CREATED, headers, body)
}

#[idempotent(required)]
async fn create_json(State(runs): State<Runs>, Json(v): Json<serde_json::Value>) -> Response {
    let n = runs.bump();
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "run": n, "echo": v })),
    )
        .into_response()
}

/// Answers with the status given in the body, so a test can choose it.
#[idempotent]
async fn status_from_body(State(runs): State<Runs>, body: String) -> (StatusCode, String) {
    status_from_body_inner(&runs, &body)
}

#[idempotent(store = "2xx,4xx")]
async fn keeps_client_errors(State(runs): State<Runs>, body: String) -> (StatusCode, String) {
    status_from_body_inner(&runs, &body)
}

fn status_from_body_inner(runs: &Runs, body: &str) -> (StatusCode, String) {
    let n = runs.bump();
    let status = body.trim().parse().unwrap_or(200);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        format!("run {n}"),
    )
}

/// Panics on its first run only.
#[idempotent]
async fn panics_once(State(runs): State<Runs>) -> &'static str {
    if runs.bump() == 1 {
        panic!("the payment provider returned nonsense");
    }
    "paid"
}

/// Takes `x-sleep-ms` milliseconds.
#[idempotent(lease = "100ms")]
async fn slow(State(runs): State<Runs>, headers: HeaderMap) -> String {
    let n = runs.bump();
    let ms = headers
        .get("x-sleep-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("run {n}")
}

/// Streams the words of the request body back, one chunk each.
#[idempotent]
async fn streamed(State(runs): State<Runs>, body: String) -> Body {
    let n = runs.bump();
    let chunks: Vec<_> = std::iter::once(format!("run {n}:"))
        .chain(body.split(' ').map(|word| format!(" {word}")))
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)))
        .collect();
    Body::from_stream(futures::stream::iter(chunks))
}

/// Its body panics after its first chunk, on the first run only.
#[idempotent]
async fn body_panics_once(State(runs): State<Runs>) -> Body {
    let first_run = runs.bump() == 1;
    let chunks = futures::stream::iter([1, 2]).map(move |n| {
        if n == 2 && first_run {
            panic!("the export stream broke");
        }
        Ok::<_, std::io::Error>(Bytes::from(format!("part {n};")))
    });
    Body::from_stream(chunks)
}

/// Its body returns an error after its first chunk, on the first run only.
#[idempotent]
async fn body_fails_once(State(runs): State<Runs>) -> Body {
    let first_run = runs.bump() == 1;
    let chunks = futures::stream::iter([1, 2]).map(move |n| {
        if n == 2 && first_run {
            return Err(std::io::Error::other("the export stream broke"));
        }
        Ok(Bytes::from(format!("part {n};")))
    });
    Body::from_stream(chunks)
}

/// Streams four chunks, 60 ms apart: 240 ms in all, longer than its 100 ms lease.
#[idempotent(lease = "100ms")]
async fn slow_body(State(runs): State<Runs>) -> Body {
    let n = runs.bump();
    let chunks = futures::stream::iter(1..=4).then(move |part| async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        Ok::<_, std::io::Error>(Bytes::from(format!("run {n} part {part};")))
    });
    Body::from_stream(chunks)
}

type Response = axum::response::Response;

fn app_with(idempotency: Idempotency) -> (Router, Runs) {
    let runs = Runs::default();
    let state = AppState {
        runs: runs.clone(),
        idempotency,
    };
    let app = Router::new()
        .route("/create", any(create))
        .route("/other", post(create))
        .route("/items/{id}", post(create))
        .route("/json", post(create_json))
        .route("/status", post(status_from_body))
        .route("/keep4xx", post(keeps_client_errors))
        .route("/panic", post(panics_once))
        .route("/slow", post(slow))
        .route("/streamed", post(streamed))
        .route("/body-panics", post(body_panics_once))
        .route("/body-fails", post(body_fails_once))
        .route("/slow-body", post(slow_body))
        .with_state(state);
    (app, runs)
}

fn app() -> (Router, Runs) {
    app_with(Idempotency::new(MemoryStore::new()))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "protocol errors are problem+json"
        );
        serde_json::from_slice(&self.body).expect("a problem body is JSON")
    }

    /// The anchor of the problem `type`.
    fn problem_type(&self) -> String {
        let problem = self.problem();
        assert_eq!(problem["status"], self.status.as_u16());
        assert!(problem["title"].is_string() && problem["detail"].is_string());
        let ty = problem["type"].as_str().expect("type is a string");
        ty.rsplit_once('#')
            .expect("type has an anchor")
            .1
            .to_owned()
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

fn request(method: Method, uri: &str, key: Option<&[u8]>, body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        builder = builder.header(
            "idempotency-key",
            HeaderValue::from_bytes(key).expect("test keys are valid header values"),
        );
    }
    builder
        .body(Body::from(body.to_owned()))
        .expect("a valid request")
}

fn post_with(uri: &str, key: &str, body: &str) -> Request<Body> {
    request(Method::POST, uri, Some(key.as_bytes()), body)
}

fn json_post(uri: &str, key: &str, body: &str) -> Request<Body> {
    typed_post(uri, key, "application/json", body)
}

/// A POST of `body` with `content_type`.
fn typed_post(uri: &str, key: &str, content_type: &str, body: &str) -> Request<Body> {
    let mut req = post_with(uri, key, body);
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("a valid content type"),
    );
    req
}

#[tokio::test]
async fn a_retry_replays_status_headers_and_body_without_running_again() {
    let (app, runs) = app();
    let first = send(&app, post_with("/create", "k-1", "pay 10")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed(), "the first answer is not a replay");
    assert_eq!(first.headers[header::SET_COOKIE], "session=s3cret");

    let retry = send(&app, post_with("/create", "k-1", "pay 10")).await;
    assert_eq!(runs.get(), 1, "the handler ran once");
    assert_eq!(retry.status, StatusCode::CREATED, "201 stays 201");
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body, "body byte for byte");
    for name in ["location", "etag", "x-binary", "content-type"] {
        assert_eq!(retry.headers.get(name), first.headers.get(name), "{name}");
    }
    let traces: Vec<_> = retry.headers.get_all("x-trace").iter().collect();
    assert_eq!(traces, ["a", "b"], "repeated headers kept in order");
    assert!(
        retry.headers.get(header::SET_COOKIE).is_none(),
        "a session cookie is never replayed to whoever retries"
    );
}

#[tokio::test]
async fn quoted_and_bare_keys_are_the_same_key() {
    let (app, runs) = app();
    send(&app, post_with("/create", "abc", "x")).await;
    let retry = send(&app, post_with("/create", "\"abc\"", "x")).await;
    assert!(retry.replayed());
    // Structured Field parameters are not part of the key.
    let with_parameters = send(&app, post_with("/create", "\"abc\";v=1", "x")).await;
    assert!(with_parameters.replayed());
    let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    send(&app, post_with("/create", uuid, "x")).await;
    assert!(send(&app, post_with("/create", uuid, "x")).await.replayed());
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn reserialised_json_is_the_same_request() {
    let (app, runs) = app();
    let first = send(
        &app,
        json_post("/json", "k", r#"{"amount":10,"currency":"EUR"}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = send(
        &app,
        json_post(
            "/json",
            "k",
            "{\n  \"currency\": \"EUR\",\n  \"amount\": 10\n}",
        ),
    )
    .await;
    assert!(retry.replayed(), "key order and whitespace do not matter");
    assert_eq!(retry.body, first.body);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_rebuilt_form_is_the_same_request() {
    let (app, runs) = app();
    let form = "application/x-www-form-urlencoded";
    let first = send(
        &app,
        typed_post("/create", "f", form, "amount=10&note=a+gift"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The same fields in another order and encoding, as a client that builds the form
    // from a map again sends them.
    let retry = send(
        &app,
        typed_post("/create", "f", form, "note=a%20gift&amount=10"),
    )
    .await;
    assert!(retry.replayed(), "{}", retry.status);
    let other = send(
        &app,
        typed_post("/create", "f", form, "note=a+gift&amount=11"),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);

    // A multipart form drawn again gets a new random boundary.
    let multipart = |boundary: &str| {
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n10\r\n--{boundary}--\r\n"
        );
        typed_post(
            "/create",
            "m",
            &format!("multipart/form-data; boundary={boundary}"),
            &body,
        )
    };
    assert_eq!(
        send(&app, multipart("a1b2c3")).await.status,
        StatusCode::CREATED
    );
    assert!(send(&app, multipart("z9y8x7w6")).await.replayed());
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let (app, runs) = app();
    send(&app, json_post("/json", "k", r#"{"amount":10}"#)).await;
    let reused = send(&app, json_post("/json", "k", r#"{"amount":11}"#)).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.problem_type(), "key-reused");
    assert_eq!(runs.get(), 1);
    // The original request still replays.
    assert!(
        send(&app, json_post("/json", "k", r#"{"amount":10}"#))
            .await
            .replayed()
    );
}

/// Numbers an `f64` cannot hold (amounts in wei, decimals of 18 digits) are told apart:
/// another amount under the same key is a `422`, not the first amount's replay.
#[tokio::test]
async fn amounts_past_what_an_f64_holds_are_told_apart() {
    let (app, runs) = app();
    let first = r#"{"to":"0xab","wei":100000000000000000001}"#;
    send(&app, json_post("/json", "w", first)).await;
    let other = r#"{"to":"0xab","wei":100000000000000000002}"#;
    let reused = send(&app, json_post("/json", "w", other)).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.problem_type(), "key-reused");
    // The first amount, its fields in another order, still replays.
    let reordered = r#"{ "wei": 100000000000000000001, "to": "0xab" }"#;
    assert!(
        send(&app, json_post("/json", "w", reordered))
            .await
            .replayed()
    );
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_key_is_scoped_to_method_and_path() {
    let (app, runs) = app();
    for (method, uri) in [
        (Method::POST, "/create"),
        (Method::PUT, "/create"),
        (Method::PATCH, "/create"),
        (Method::DELETE, "/create"),
        (Method::POST, "/other"),
    ] {
        let answer = send(&app, request(method.clone(), uri, Some(b"shared"), "x")).await;
        assert!(!answer.replayed(), "{method} {uri} is a different request");
    }
    assert_eq!(runs.get(), 5);
}

#[tokio::test]
async fn a_path_differently_percent_encoded_is_the_same_path() {
    let (app, runs) = app();
    // `%61` is `a` and `%2f` is `%2F`: one path, as the router sees it.
    let first = send(&app, request(Method::POST, "/items/a%2Fb", Some(b"k"), "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for uri in ["/items/%61%2fb", "/items/a%2fb", "/items/%61%2F%62"] {
        let answer = send(&app, request(Method::POST, uri, Some(b"k"), "x")).await;
        assert!(answer.replayed(), "{uri} is /items/a%2Fb");
    }
    assert_eq!(runs.get(), 1);
    // Nor is `%3A` another path than `:`, `%40` than `@`: the path parameter is `a:b@c`
    // either way, and client libraries differ on which of them they escape.
    let escaped = send(
        &app,
        request(Method::POST, "/items/a%3Ab%40c", Some(b"k"), "x"),
    )
    .await;
    assert!(!escaped.replayed());
    assert_eq!(runs.get(), 2);
    for uri in ["/items/a:b@c", "/items/a%3ab@c", "/items/a:b%40c"] {
        let answer = send(&app, request(Method::POST, uri, Some(b"k"), "x")).await;
        assert!(answer.replayed(), "{uri} is /items/a:b@c");
    }
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn safe_methods_pass_straight_through() {
    let (app, runs) = app();
    for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
        for _ in 0..2 {
            let answer = send(&app, request(method.clone(), "/create", Some(b"k"), "")).await;
            assert!(!answer.replayed(), "{method} is never replayed");
        }
    }
    assert_eq!(runs.get(), 8, "each safe request ran the handler");
}

#[tokio::test]
async fn a_missing_key_passes_through_unless_required() {
    let (app, runs) = app();
    for _ in 0..2 {
        let answer = send(&app, request(Method::POST, "/create", None, "x")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert!(!answer.replayed());
    }
    assert_eq!(runs.get(), 2);

    let mut req = request(Method::POST, "/json", None, "{}");
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let answer = send(&app, req).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.problem_type(), "missing-key");
    assert!(
        answer.problem()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("idempotency-key")),
        "the detail names the header to send"
    );
    assert_eq!(runs.get(), 2, "a required key missing runs nothing");
}

#[tokio::test]
async fn invalid_keys_are_rejected_with_400() {
    let (app, runs) = app();
    let long = "k".repeat(256);
    let cases: [(&str, &[u8], &str); 7] = [
        ("empty", b"", "invalid-key"),
        ("empty quoted", b"\"\"", "invalid-key"),
        ("longer than 255 bytes", long.as_bytes(), "invalid-key"),
        ("not ASCII", b"caf\xc3\xa9", "invalid-key"),
        ("a space", b"\"a b\"", "invalid-key"),
        ("unterminated quote", b"\"abc", "invalid-key"),
        ("bad escape", b"\"a\\nb\"", "invalid-key"),
    ];
    for (what, key, kind) in cases {
        let answer = send(&app, request(Method::POST, "/create", Some(key), "x")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(answer.problem_type(), kind, "{what}");
    }
    let mut two = request(Method::POST, "/create", Some(b"a"), "x");
    two.headers_mut()
        .append("idempotency-key", HeaderValue::from_static("b"));
    let answer = send(&app, two).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.problem_type(), "multiple-keys");
    assert_eq!(runs.get(), 0, "no invalid request reached the handler");

    // 255 bytes is still fine.
    let longest = "k".repeat(255);
    let answer = send(&app, post_with("/create", &longest, "x")).await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_consumes_nothing() {
    let (app, runs) = app_with(Idempotency::new(MemoryStore::new()).with_body_limit(16));
    let big = "x".repeat(17);
    let answer = send(&app, post_with("/create", "k", &big)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.problem_type(), "body-too-large");

    // A streamed body without Content-Length is caught too.
    let stream = futures::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"abcdefgh"))),
    );
    let mut req = post_with("/create", "k", "");
    *req.body_mut() = Body::from_stream(stream);
    let answer = send(&app, req).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(runs.get(), 0);

    // So is a limit a layer in front set on the body (tower-http's `RequestBodyLimit`
    // wraps it so), below this one.
    let mut req = post_with("/create", "k", "");
    let limited = http_body_util::Limited::new(Body::from("x".repeat(12)), 8);
    *req.body_mut() = Body::new(limited);
    let answer = send(&app, req).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.problem_type(), "body-too-large");
    assert_eq!(runs.get(), 0);

    let answer = send(&app, post_with("/create", "k", "small")).await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "the key was not used up"
    );
}

/// A request whose body arrives in `chunks`, without a `Content-Length`.
fn chunked_post(uri: &str, key: &str, chunks: &[&'static str]) -> Request<Body> {
    let mut req = post_with(uri, key, "");
    let chunks = chunks
        .iter()
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::from_static(chunk.as_bytes())));
    *req.body_mut() = Body::from_stream(futures::stream::iter(chunks.collect::<Vec<_>>()));
    req
}

#[tokio::test]
async fn a_body_in_chunks_is_the_same_request_as_in_one_piece() {
    let (app, runs) = app();
    let chunked = chunked_post("/create", "k", &["pay ", "", "the invoice", " now"]);
    let first = send(&app, chunked).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.body, "run 1: pay the invoice now",
        "the handler got it whole"
    );

    let retry = send(&app, post_with("/create", "k", "pay the invoice now")).await;
    assert!(retry.replayed(), "one piece is the same request");
    assert_eq!(retry.body, first.body);

    let other = send(
        &app,
        chunked_post("/create", "k", &["pay the ", "bill now"]),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn only_2xx_is_stored_by_default_and_anything_else_runs_again() {
    let (app, runs) = app();
    for status in ["400", "404", "409", "500", "503"] {
        let first = send(&app, post_with("/status", status, status)).await;
        assert_eq!(first.status.as_str(), status);
        let retry = send(&app, post_with("/status", status, status)).await;
        assert_eq!(retry.status.as_str(), status);
        assert!(!retry.replayed(), "{status} is not stored");
    }
    assert_eq!(runs.get(), 10, "each retry of a non-2xx answer ran again");
    let first = send(&app, post_with("/status", "202", "202")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert!(
        send(&app, post_with("/status", "202", "202"))
            .await
            .replayed()
    );
}

#[tokio::test]
async fn store_2xx_4xx_keeps_client_errors_but_never_retry_later_answers() {
    let (app, runs) = app();
    for (status, kept) in [
        ("404", true),
        ("422", true),
        // About the attempt, not the operation: a retry may carry new credentials,
        // come later, or meet a raised limit.
        ("401", false),
        ("403", false),
        ("407", false),
        ("408", false),
        ("413", false),
        ("429", false),
        ("500", false),
    ] {
        send(&app, post_with("/keep4xx", status, status)).await;
        let retry = send(&app, post_with("/keep4xx", status, status)).await;
        assert_eq!(retry.status.as_str(), status);
        assert_eq!(retry.replayed(), kept, "{status}");
    }
    assert_eq!(runs.get(), 2 + 7 * 2);
}

/// A failure while answering at `path` (a handler that fails on its first run only) gets
/// `500` with the `problem` type and releases the key: the retry runs the handler again
/// and answers `body`, and the request after it is a replay.
async fn a_failure_releases_the_key(path: &str, problem: &str, body: &[u8]) {
    let (app, runs) = app();
    let first = send(&app, post_with(path, "k", "")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.problem_type(), problem);
    let retry = send(&app, post_with(path, "k", "")).await;
    assert_eq!(
        retry.status,
        StatusCode::OK,
        "the retry ran the handler again"
    );
    assert_eq!(&retry.body[..], body);
    assert!(!retry.replayed());
    assert_eq!(runs.get(), 2);
    let again = send(&app, post_with(path, "k", "")).await;
    assert!(again.replayed());
    assert_eq!(again.body, retry.body);
}

#[tokio::test]
async fn a_panicking_handler_releases_its_key() {
    a_failure_releases_the_key("/panic", "handler-panicked", b"paid").await;
}

#[tokio::test]
async fn a_response_body_that_panics_releases_its_key() {
    a_failure_releases_the_key("/body-panics", "handler-panicked", b"part 1;part 2;").await;
}

#[tokio::test]
async fn a_response_body_that_fails_releases_its_key() {
    a_failure_releases_the_key("/body-fails", "response-failed", b"part 1;part 2;").await;
}

#[tokio::test(start_paused = true)]
async fn a_body_streamed_for_longer_than_the_lease_keeps_its_claim() {
    let (app, runs) = app();
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with("/slow-body", "k", "")).await }
    });
    // Well past the 100 ms lease, while the body is still being produced.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let duplicate = send(&app, post_with("/slow-body", "k", "")).await;
        assert_eq!(duplicate.status, StatusCode::CONFLICT);
    }
    let first = first.await.expect("first request");
    assert_eq!(
        &first.body[..],
        b"run 1 part 1;run 1 part 2;run 1 part 3;run 1 part 4;"
    );
    let retry = send(&app, post_with("/slow-body", "k", "")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(runs.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_the_execution_limit_is_stopped_and_its_key_released() {
    let idempotency =
        Idempotency::new(MemoryStore::new()).with_execution_limit(Duration::from_secs(1));
    let (app, runs) = app_with(idempotency);
    let started = tokio::time::Instant::now();
    let stuck = send(&app, slow_request("k", "a", 3_600_000)).await;
    assert_eq!(stuck.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(stuck.problem_type(), "handler-timed-out");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // The key is free: the retry runs, and this time in time.
    let retry = send(&app, slow_request("k", "a", 10)).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(&retry.body[..], b"run 2");
    assert_eq!(runs.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_lost_its_lease_is_still_stopped_at_the_limit() {
    let store = Flaky::new(Fault::LostLease);
    let idempotency = Idempotency::new(store).with_execution_limit(Duration::from_secs(1));
    let (app, _) = app_with(idempotency);
    let started = tokio::time::Instant::now();
    let stuck = send(&app, slow_request("k", "a", 3_600_000)).await;
    assert_eq!(stuck.problem_type(), "handler-timed-out");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

fn slow_request(key: &str, body: &str, sleep_ms: u64) -> Request<Body> {
    let mut req = post_with("/slow", key, body);
    req.headers_mut()
        .insert("x-sleep-ms", HeaderValue::from(sleep_ms));
    req
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_while_in_flight_gets_409_with_retry_after() {
    let (app, runs) = app();
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, slow_request("k", "a", 400)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let duplicate = send(&app, slow_request("k", "a", 400)).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.problem_type(), "request-in-flight");
    let retry_after: u64 = duplicate.headers[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    // The handler answers in 400 ms: come back in a second, not when the lease (60 s,
    // renewed as it runs) would lapse.
    assert_eq!(retry_after, 1);

    // A different body is the client's mistake, reported even while in flight.
    let mismatch = send(&app, slow_request("k", "b", 400)).await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);

    let first = first.await.expect("first request");
    assert_eq!(first.status, StatusCode::OK);
    let after = send(&app, slow_request("k", "a", 400)).await;
    assert!(after.replayed());
    assert_eq!(after.body, first.body);
    assert_eq!(runs.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_handler_slower_than_its_lease_is_never_run_twice() {
    let (app, runs) = app();
    // The lease is 100 ms; the handler takes 600 ms. Its owner renews the lease, so
    // duplicates sent well after the first lease would have lapsed still see it in flight.
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, slow_request("k", "a", 600)).await }
    });
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(110)).await;
        let duplicate = send(&app, slow_request("k", "a", 600)).await;
        assert_eq!(duplicate.status, StatusCode::CONFLICT);
    }
    assert_eq!(first.await.expect("first").status, StatusCode::OK);
    assert_eq!(runs.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_fails_is_tried_again_before_the_lease_lapses() {
    // The lease is 100 ms, renewed every 33 ms; the first two renewals fail. Tried again
    // only at the next period, the third would come as the lease lapses.
    let store = Flaky::new(Fault::FailedRenewals(2));
    let (app, runs) = app_with(Idempotency::new(store));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, slow_request("k", "a", 400)).await }
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(110)).await;
        let duplicate = send(&app, slow_request("k", "a", 400)).await;
        assert_eq!(duplicate.status, StatusCode::CONFLICT, "the lease was kept");
    }
    assert_eq!(first.await.expect("first").status, StatusCode::OK);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_response_too_large_to_keep_is_sent_once_and_never_run_again() {
    let (app, runs) = app_with(Idempotency::new(MemoryStore::new()).with_response_limit(8));
    let first = send(&app, post_with("/create", "k", "a long enough body")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(&first.body[..], b"run 1: a long enough body", "sent whole");
    let retry = send(&app, post_with("/create", "k", "a long enough body")).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.problem_type(), "response-not-replayable");
    assert!(retry.replayed());
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_streamed_response_is_stored_whole_and_replayed_byte_for_byte() {
    let (app, runs) = app();
    for (key, words) in [("one", ""), ("two", "a"), ("many", "pay the invoice now")] {
        let first = send(&app, post_with("/streamed", key, words)).await;
        let expected = format!("run {}: {words}", runs.get());
        assert_eq!(first.body, expected.as_bytes(), "sent whole, in order");
        let retry = send(&app, post_with("/streamed", key, words)).await;
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body, "replayed byte for byte");
    }
    assert_eq!(runs.get(), 3);

    // Past the limit in a later chunk: the caller still gets every chunk, in order.
    let (app, runs) = app_with(Idempotency::new(MemoryStore::new()).with_response_limit(12));
    let first = send(&app, post_with("/streamed", "k", "pay the invoice now")).await;
    assert_eq!(&first.body[..], b"run 1: pay the invoice now");
    let retry = send(&app, post_with("/streamed", "k", "pay the invoice now")).await;
    assert_eq!(retry.problem_type(), "response-not-replayable");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_store_that_fails_or_hangs_gets_503_and_runs_nothing() {
    for broken in [Broken::Failing, Broken::Hanging] {
        let idempotency = Idempotency::new(broken).with_store_timeout(Duration::from_millis(50));
        let (app, runs) = app_with(idempotency);
        let answer = send(&app, post_with("/create", "k", "x")).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.problem_type(), "store-unavailable");
        assert!(answer.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(runs.get(), 0, "never execute without a claim");
    }
}

#[tokio::test]
async fn a_full_memory_store_gets_503_for_new_keys_and_replays_the_rest() {
    let (app, runs) = app_with(Idempotency::new(MemoryStore::new().with_max_entries(1)));
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let refused = send(&app, post_with("/create", "new", "x")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.problem_type(), "store-unavailable");
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(runs.get(), 1, "never execute without a claim");

    let replay = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (StatusCode::CREATED, true)
    );
    assert_eq!(replay.body, first.body);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn durations_too_long_for_a_deadline_are_cut_not_a_panic() {
    let forever = |idempotency: Idempotency| {
        idempotency
            .with_ttl(Duration::MAX)
            .with_lease(Duration::MAX)
            .with_store_timeout(Duration::MAX)
    };
    let (app, runs) = app_with(forever(Idempotency::new(MemoryStore::new())));
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    let not_stored = send(&app, post_with("/status", "k", "500")).await;
    assert_eq!(not_stored.status, StatusCode::INTERNAL_SERVER_ERROR);
    let released = send(&app, post_with("/status", "k", "201")).await;
    assert_eq!(
        released.status,
        StatusCode::CREATED,
        "the 500 released its key"
    );
    assert_eq!(runs.get(), 3);

    // A completion that fails holds the answer back for no more than the lease's third,
    // however long the store may take; the client still gets its answer.
    let (app, _) = app_with(forever(Idempotency::new(Flaky::new(
        Fault::FailedCompletes(1),
    ))));
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_store_that_panics_gets_500_and_runs_nothing() {
    let (app, runs) = app_with(Idempotency::new(Broken::Panicking));
    for _ in 0..2 {
        let answer = send(&app, post_with("/create", "k", "x")).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.problem_type(), "request-failed");
    }
    assert_eq!(runs.get(), 0, "never execute without a claim");
}

#[tokio::test]
async fn the_app_chooses_which_headers_are_replayed() {
    use axum::http::HeaderName;
    use idempotent_runtime::response::StoredHeaders;

    let except = StoredHeaders::except([HeaderName::from_static("x-trace")]);
    let (app, _) = app_with(Idempotency::new(MemoryStore::new()).with_stored_headers(except));
    send(&app, post_with("/create", "k", "x")).await;
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert!(retry.replayed());
    assert!(retry.headers.get("x-trace").is_none(), "denied header");
    assert_eq!(retry.headers[header::LOCATION], "/orders/7");
    assert_eq!(retry.headers[header::ETAG], "\"v1\"");

    let only = StoredHeaders::only([header::LOCATION]);
    let (app, _) = app_with(Idempotency::new(MemoryStore::new()).with_stored_headers(only));
    send(&app, post_with("/create", "k", "x")).await;
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(retry.headers[header::LOCATION], "/orders/7");
    assert!(
        retry.headers.contains_key(header::CONTENT_TYPE),
        "always kept"
    );
    for name in ["etag", "x-trace", "x-binary", "set-cookie"] {
        assert!(retry.headers.get(name).is_none(), "{name} is not allowed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_granted_after_its_503_does_not_block_the_key() {
    // The store answers the first claim after 300 ms, long past the 50 ms timeout, and
    // grants it then. The client got a 503; its retry must not find the key held by that
    // orphaned claim for the whole 60 s lease.
    let store = Flaky::new(Fault::SlowClaim(Duration::from_millis(300)));
    let idempotency = Idempotency::new(store).with_store_timeout(Duration::from_millis(50));
    let (app, runs) = app_with(idempotency);
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "the retry runs at once");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn drain_waits_for_a_handler_whose_client_went_away() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let (app, runs) = app_with(idempotency.clone());
    let request = tokio::spawn({
        let app = app.clone();
        async move { send(&app, slow_request("k", "a", 300)).await }
    });
    while runs.get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The client goes away; its handler goes on in a task of its own, which a runtime
    // shutting down would drop. `drain` waits for it and its record.
    request.abort();
    idempotency.drain().await;
    let retry = send(&app, slow_request("k", "a", 300)).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert!(
        retry.replayed(),
        "the record was stored before drain returned"
    );
    assert_eq!(runs.get(), 1);
}

tokio::task_local! {
    static REQUEST_ID: &'static str;
}

#[idempotent]
async fn reads_the_request_id() -> String {
    REQUEST_ID.with(|id| format!("handled {id}"))
}

#[tokio::test]
async fn the_handler_keeps_the_requests_task_locals_while_the_store_answers_late() {
    // A middleware scopes a task-local to the request; the store's claim is not ready
    // on its first poll, so the handler runs only after a wait. It still runs in the
    // request's task, where the task-local is set.
    let store = Flaky::new(Fault::SlowClaim(Duration::from_millis(20)));
    let app = Router::new()
        .route("/request-id", post(reads_the_request_id))
        .layer(axum::middleware::from_fn(
            |request: axum::extract::Request, next: axum::middleware::Next| {
                REQUEST_ID.scope("req-7", next.run(request))
            },
        ))
        .with_state(Idempotency::new(store));
    let answer = send(&app, post_with("/request-id", "k", "")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "handled req-7");
}

#[tokio::test]
async fn a_failed_completion_is_retried_so_the_retry_gets_the_replay() {
    let (app, runs) = app_with(Idempotency::new(Flaky::new(Fault::FailedCompletes(1))));
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert!(
        retry.replayed(),
        "got {} instead of the replay",
        retry.status
    );
    assert_eq!(runs.get(), 1);
}

/// A completion that still fails after the quick retries is tried again once the
/// response has gone out: when the store answers again within the lease, the record is
/// kept and a retry gets the replay, not a second execution.
#[tokio::test]
async fn a_completion_the_store_failed_for_a_while_is_kept_once_it_answers() {
    // The three quick attempts and the first one in the background fail.
    let (app, runs) = app_with(Idempotency::new(Flaky::new(Fault::FailedCompletes(4))));
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let retry = send(&app, post_with("/create", "k", "x")).await;
        if retry.replayed() {
            assert_eq!(retry.body, first.body);
            break;
        }
        assert_eq!(
            retry.status,
            StatusCode::CONFLICT,
            "in flight until the completion lands"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the completion was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs.get(), 1);
}

/// A completion that never lands is given up about a lease after the response: `drain`
/// returns, and once the lease has lapsed the key runs again.
#[tokio::test]
async fn a_completion_that_never_lands_is_given_up_and_frees_the_key() {
    let lease = Duration::from_millis(300);
    let idempotency = Idempotency::new(Flaky::new(Fault::FailedCompletes(u32::MAX)))
        .with_lease(lease)
        .with_store_timeout(Duration::from_millis(50));
    let (app, runs) = app_with(idempotency.clone());
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::timeout(Duration::from_secs(10), idempotency.drain())
        .await
        .expect("the background completion gives up");
    tokio::time::sleep(lease).await;
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.replayed());
    assert_eq!(runs.get(), 2);
}

/// A drain does not wait a lease for a completion the store keeps failing: once it has
/// begun, the next attempt is the last.
#[tokio::test]
async fn a_drain_cuts_a_failing_completion_short() {
    let idempotency = Idempotency::new(Flaky::new(Fault::FailedCompletes(u32::MAX)))
        .with_store_timeout(Duration::from_millis(50));
    let (app, runs) = app_with(idempotency.clone());
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::timeout(Duration::from_secs(15), idempotency.drain())
        .await
        .expect("the drain ends the attempts, not the 60 s lease");
    assert_eq!(runs.get(), 1);
}

/// A store that panics fails the request with a problem that does not promise a retry
/// runs again: the handler ran, and its key stays claimed until the lease lapses.
#[tokio::test]
async fn a_store_that_panics_is_a_500_that_promises_nothing_of_the_key() {
    let (app, runs) = app_with(Idempotency::new(Flaky::new(Fault::PanickingComplete)));
    let first = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.problem_type(), "request-failed");
    assert_eq!(runs.get(), 1);
    let retry = send(&app, post_with("/create", "k", "x")).await;
    assert_eq!(
        retry.status,
        StatusCode::CONFLICT,
        "the key is still claimed"
    );
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_failed_release_is_retried_so_the_retry_runs_at_once() {
    let (app, runs) = app_with(Idempotency::new(Flaky::new(Fault::FailedRelease)));
    let first = send(&app, post_with("/status", "k", "500")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = send(&app, post_with("/status", "k", "500")).await;
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR, "not a 409");
    assert_eq!(runs.get(), 2);
}
