//! The client helper keeps one key across retries, so a lost response is recovered by a
//! replay instead of a second execution.
#![cfg(feature = "client")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idempotent_runtime::client::reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use idempotent_runtime::client::reqwest_retry::RetryTransientMiddleware;
use idempotent_runtime::client::reqwest_retry::policies::ExponentialBackoff;
use idempotent_runtime::client::{IdempotencyKey, IdempotencyKeys, RetryInFlight};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

#[derive(Clone, Default)]
struct Server {
    runs: Arc<AtomicUsize>,
    /// The key of every attempt that reached the server, in order.
    keys: Arc<Mutex<Vec<Option<String>>>>,
    /// How many responses the "proxy" in front still loses.
    to_lose: Arc<AtomicUsize>,
}

#[derive(Clone, FromRef)]
struct AppState {
    server: Server,
    idempotency: Idempotency,
}

#[idempotent(required)]
async fn create(State(server): State<Server>, headers: HeaderMap) -> (StatusCode, String) {
    let n = server.runs.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(ms) = headers
        .get("x-sleep-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    (StatusCode::CREATED, format!("order {n}"))
}

/// A business conflict the endpoint stores: a retry gets it replayed, `Retry-After`
/// and all.
#[idempotent(required, store = "2xx,409")]
async fn reserve(State(server): State<Server>) -> (StatusCode, [(&'static str, &'static str); 2]) {
    server.runs.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::CONFLICT,
        [
            ("retry-after", "1"),
            ("content-type", "application/problem+json"),
        ],
    )
}

/// A failure the endpoint stores, as Stripe does with its 5xx: a retry gets it replayed.
#[idempotent(required, store = "2xx,5xx")]
async fn charge(State(server): State<Server>) -> StatusCode {
    server.runs.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

/// A proxy in front of the app that notes each attempt's key and loses responses.
async fn lossy_proxy(State(server): State<Server>, request: Request, next: Next) -> Response {
    let key = request
        .headers()
        .get_all("idempotency-key")
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .reduce(|a, b| format!("{a},{b}"));
    server
        .keys
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(key);
    let response = next.run(request).await;
    let lose = server
        .to_lose
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if lose {
        (StatusCode::BAD_GATEWAY, "upstream timed out").into_response()
    } else {
        response
    }
}

async fn serve() -> (String, Server) {
    let server = Server::default();
    let state = AppState {
        server: server.clone(),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let app = Router::new()
        .route("/orders", post(create).get(|| async { "orders" }))
        .route("/reservations", post(reserve))
        .route("/charges", post(charge))
        .layer(middleware::from_fn_with_state(server.clone(), lossy_proxy))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/orders"), server)
}

fn client() -> ClientWithMiddleware {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(20), Duration::from_millis(100))
        .build_with_max_retries(20);
    let retry = RetryTransientMiddleware::new_with_policy_and_strategy(policy, RetryInFlight);
    IdempotencyKeys::attach(ClientBuilder::new(reqwest::Client::new()))
        .with(retry)
        .build()
}

fn keys(server: &Server) -> Vec<Option<String>> {
    server
        .keys
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

#[tokio::test]
async fn a_lost_response_is_recovered_by_a_replay_not_a_second_run() {
    let (url, server) = serve().await;
    server.to_lose.store(2, Ordering::SeqCst);
    let response = client().post(&url).body("{}").send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(response.text().await.expect("body"), "order 1");
    assert_eq!(server.runs.load(Ordering::SeqCst), 1, "ran once");

    let keys = keys(&server);
    assert_eq!(keys.len(), 3, "two lost answers, then the replay");
    assert!(keys[0].is_some(), "the first attempt carries a key");
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for all: {keys:?}"
    );

    // The next operation gets a new key.
    client().post(&url).body("{}").send().await.expect("sent");
    assert_ne!(self::keys(&server)[3], keys[0]);
    assert_eq!(server.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_chosen_key_or_header_is_kept_and_safe_methods_get_none() {
    let (url, server) = serve().await;
    let client = client();
    client
        .post(&url)
        .with_extension(IdempotencyKey::new("refund-42"))
        .send()
        .await
        .expect("sent");
    let answer = client
        .post(&url)
        .header("Idempotency-Key", "set-by-hand")
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), StatusCode::CREATED, "not two key headers");
    client.get(&url).send().await.expect("sent");
    assert_eq!(
        keys(&server),
        [Some("refund-42".into()), Some("set-by-hand".into()), None]
    );
}

#[tokio::test]
async fn a_key_the_server_would_reject_is_not_sent() {
    let (url, server) = serve().await;
    let client = client();
    let too_long = "k".repeat(256);
    for (key, reason) in [
        ("", "empty"),
        ("order 42", "visible ASCII"),
        (too_long.as_str(), "256 bytes long"),
        ("\"unclosed", "quoted string"),
    ] {
        let err = client
            .post(&url)
            .with_extension(IdempotencyKey::new(key))
            .send()
            .await
            .expect_err("refused before sending");
        let message = format!("{err:#}");
        assert!(message.contains(reason), "{key:?}: {message}");
    }
    assert!(keys(&server).is_empty(), "nothing reached the server");
}

#[tokio::test]
async fn a_duplicate_waits_out_the_conflict_and_gets_the_response() {
    let (url, server) = serve().await;
    let first = tokio::spawn({
        let (client, url) = (client(), url.clone());
        async move {
            client
                .post(&url)
                .with_extension(IdempotencyKey::new("k"))
                .header("x-sleep-ms", "400")
                .send()
                .await
        }
    });
    // The duplicate goes once the first one's handler runs, so it meets the claim.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.runs.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first request never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duplicate = client()
        .post(&url)
        .with_extension(IdempotencyKey::new("k"))
        .header("x-sleep-ms", "400")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        duplicate.status(),
        StatusCode::CREATED,
        "retried past the 409"
    );
    assert_eq!(duplicate.headers()["idempotent-replayed"], "true");
    let first = first.await.expect("joined").expect("sent");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(server.runs.load(Ordering::SeqCst), 1);
}

/// A `409` with `Retry-After` that the handler answered is stored: once it comes back
/// replayed, retrying again would only get it again.
#[tokio::test]
async fn a_replayed_conflict_is_not_retried() {
    stops_at_the_replay("/reservations", StatusCode::CONFLICT).await;
}

/// A stored `503` is retried once, as any `503`; once it comes back replayed, it is the
/// handler's answer, which every further retry would get again.
#[tokio::test]
async fn a_replayed_failure_is_not_retried() {
    stops_at_the_replay("/charges", StatusCode::SERVICE_UNAVAILABLE).await;
}

/// Sends one request to `path`, whose handler answers `status` and stores it: the
/// client retries the first answer once and takes the replay as final.
async fn stops_at_the_replay(path: &str, status: StatusCode) {
    let (url, server) = serve().await;
    let url = url.replace("/orders", path);
    let response = client().post(&url).send().await.expect("sent");
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(
        keys(&server).len(),
        2,
        "the handler's {status}, retried once, then its replay"
    );
    assert_eq!(server.runs.load(Ordering::SeqCst), 1);
}
