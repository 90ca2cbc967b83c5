//! Every outcome is logged through `tracing`, with the key hashed, never raw.
//!
//! A binary of its own: the subscriber is process-wide, so that no event is lost to
//! tracing's per-callsite interest cache while other tests run on other threads.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use idempotent_runtime::store::TieredStore;
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use tower::ServiceExt;

mod support;
use support::broken::Broken;
use support::flaky::{Fault, Flaky};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Answers with the status in its body, after `delay` ms given in the path.
#[idempotent]
async fn answer(body: String) -> StatusCode {
    let (status, delay) = body.split_once(' ').unwrap_or((&body, "0"));
    tokio::time::sleep(Duration::from_millis(delay.parse().unwrap_or(0))).await;
    status
        .parse()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK)
}

#[idempotent(required)]
async fn answer_required() -> StatusCode {
    StatusCode::OK
}

async fn send(app: &Router, key: &str, body: &'static str) -> StatusCode {
    let request = Request::post("/")
        .header("idempotency-key", key)
        .body(Body::from(body))
        .expect("a valid request");
    app.clone()
        .oneshot(request)
        .await
        .expect("infallible")
        .status()
}

// Paused time: the conflict below meets a handler that sleeps, however busy the machine.
#[tokio::test(start_paused = true)]
async fn every_outcome_is_logged_without_the_raw_key() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let key = "secret-key-4711";
    let app = Router::new()
        .route("/", post(answer))
        .with_state(Idempotency::new(MemoryStore::new()));
    assert_eq!(send(&app, key, "201").await, StatusCode::CREATED);
    assert_eq!(send(&app, key, "201").await, StatusCode::CREATED);
    assert_eq!(
        send(&app, key, "202").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let other = "another-secret-key";
    assert_eq!(
        send(&app, other, "500").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let slow = "slow-secret-key";
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, slow, "200 300").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send(&app, slow, "200 300").await, StatusCode::CONFLICT);
    assert_eq!(first.await.expect("first"), StatusCode::OK);
    let small = Router::new()
        .route("/", post(answer))
        .with_state(Idempotency::new(MemoryStore::new()).with_body_limit(2));
    assert_eq!(
        send(&small, key, "201").await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let no_key = Request::post("/")
        .body(Body::from("201"))
        .expect("a valid request");
    let required = Router::new()
        .route("/", post(answer_required))
        .with_state(Idempotency::new(MemoryStore::new()));
    let status = required.oneshot(no_key).await.expect("infallible").status();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(send(&app, "bad key", "201").await, StatusCode::BAD_REQUEST);
    let broken = Router::new().route("/", post(answer)).with_state(
        Idempotency::new(Broken::Failing).with_store_timeout(Duration::from_millis(50)),
    );
    assert_eq!(
        send(&broken, key, "201").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A completion applied whose answer was lost: its second attempt is refused, and
    // the log does not claim a takeover that did not happen.
    let lost = Router::new()
        .route("/", post(answer))
        .with_state(Idempotency::new(Flaky::new(Fault::LostComplete)));
    assert_eq!(send(&lost, key, "201").await, StatusCode::CREATED);

    // A fast store that fails on every request warns once, and the rest go to debug.
    let tiered = Router::new()
        .route("/", post(answer))
        .with_state(Idempotency::new(TieredStore::new(
            MemoryStore::new(),
            Broken::Failing,
        )));
    for n in 0..5 {
        let key = format!("tiered-secret-{n}");
        assert_eq!(send(&tiered, &key, "201").await, StatusCode::CREATED);
    }

    let logs = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8 logs");
    let fast_failures = |level: &str| {
        logs.lines()
            .filter(|line| line.contains(level) && line.contains("fast store"))
            .count()
    };
    assert_eq!(fast_failures("WARN"), 1, "{logs}");
    // Each request: a lookup, and a copy's claim, all failing.
    assert_eq!(fast_failures("DEBUG"), 2 * 5 - 1, "{logs}");
    for outcome in [
        "claimed",
        "completed",
        "replayed",
        "key reused with a different request",
        "released",
        "conflict: request in flight",
        "idempotency store unavailable",
        "request rejected: body too large",
        "request rejected: no idempotency key",
        "request rejected: invalid idempotency key",
        "completion refused after a failed attempt: that attempt stored the response",
    ] {
        assert!(logs.contains(outcome), "no `{outcome}` event in:\n{logs}");
    }
    assert!(
        !logs.contains("response not stored: the claim was taken over"),
        "{logs}"
    );
    for raw in [key, other, slow] {
        assert!(!logs.contains(raw), "the raw key reached the logs:\n{logs}");
    }
}
