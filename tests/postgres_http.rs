//! `#[idempotent]` handlers on a real `Router` over the Postgres store: first request,
//! replay and mismatch, the statements each step sends, and the database going away and
//! coming back.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use idempotent_runtime::{Claim, Fingerprint, Idempotency, PostgresStore, Store, idempotent};
use sqlx::postgres::{PgPoolOptions, PgSslMode};
use support::postgres::{Forwarder, TestSchema, fresh_store, row_count, store_in};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Arc<AtomicUsize>,
    idempotency: Idempotency,
}

#[derive(serde::Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

#[idempotent(ttl = "1h", key = header)]
async fn create_order(
    State(runs): State<Arc<AtomicUsize>>,
    Json(order): Json<Order>,
) -> impl IntoResponse {
    let id = runs.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        [("location", format!("/orders/{id}"))],
        Json(serde_json::json!({"order_id": id, "item": order.item, "qty": order.qty})),
    )
}

fn app(idempotency: Idempotency) -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let state = AppState {
        runs: Arc::clone(&runs),
        idempotency,
    };
    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(state);
    (router, runs)
}

async fn send(app: &Router, key: &str, body: &str) -> Response {
    let request = Request::post("/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    app.clone().oneshot(request).await.unwrap()
}

async fn body(response: Response) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_runs_retry_replays_other_body_is_rejected() {
    let (store, _schema) = fresh_store().await;
    let (app, runs) = app(Idempotency::new(store));

    let first = send(&app, "order-1", r#"{"item":"widget","qty":1}"#).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first_body = body(first).await;

    // The same request again, re-serialised by the client: replayed, not run again.
    let retry = send(&app, "order-1", r#"{ "qty": 1, "item": "widget" }"#).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["location"], location);
    assert_eq!(body(retry).await, first_body);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Another body under the same key: the client's mistake, reported.
    let other = send(&app, "order-1", r#"{"item":"gadget","qty":2}"#).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Another key is another order.
    let second = send(&app, "order-2", r#"{"item":"widget","qty":1}"#).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A migrated store in `schema` over a small pool through `forwarder`, whose connections
/// are given up after half a second when the forwarder is cut.
async fn store_behind(forwarder: &Forwarder, schema: &TestSchema) -> PostgresStore {
    let through_forwarder = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(forwarder.connect_options())
        .await
        .unwrap();
    let store = PostgresStore::new(through_forwarder)
        .with_schema(schema.name())
        .unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_fails_closed_and_the_app_recovers() {
    let schema = TestSchema::new();
    let forwarder = Forwarder::to_database().await;
    let store = store_behind(&forwarder, &schema).await;
    let pool = store.pool().clone();
    let (app, runs) = app(Idempotency::new(store).with_store_timeout(Duration::from_secs(1)));
    let order = r#"{"item":"widget","qty":1}"#;

    assert_eq!(
        send(&app, "before", order).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    forwarder.cut().await;
    for key in ["during-1", "during-2", "before"] {
        let response = send(&app, key, order).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "key {key} while the database is away"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("retry-after"));
        let problem: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("#store-unavailable"),
            "{problem}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no handler runs without the store"
    );

    // Same port, same app, same pool: no restart. The pool has found its way back (a
    // new connection on a busy machine can take longer than one claim may wait for it).
    forwarder.restore().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sqlx::query("SELECT 1").execute(&pool).await.is_err() {
        assert!(Instant::now() < deadline, "the pool did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = send(&app, "during-1", order).await;
    assert_eq!(
        recovered.status(),
        StatusCode::CREATED,
        "the app answers again"
    );
    assert!(recovered.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the rejected request runs once on retry"
    );
    let replay = send(&app, "before", order).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Lets a test act between a handler's start and its answer.
#[derive(Clone, Default)]
struct Gate {
    started: Arc<tokio::sync::Notify>,
    answer: Arc<tokio::sync::Notify>,
}

#[derive(Clone, FromRef)]
struct GatedState {
    runs: Arc<AtomicUsize>,
    gate: Gate,
    idempotency: Idempotency,
}

/// `create_order` whose first run waits for the test's word before it answers.
#[idempotent(ttl = "1h", key = header)]
async fn gated_order(
    State(runs): State<Arc<AtomicUsize>>,
    State(gate): State<Gate>,
    Json(order): Json<Order>,
) -> impl IntoResponse {
    let id = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if id == 1 {
        gate.started.notify_one();
        gate.answer.notified().await;
    }
    (
        StatusCode::CREATED,
        Json(serde_json::json!({"order_id": id, "item": order.item, "qty": order.qty})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_outage_kept_from_the_database_is_stored_once_it_is_back() {
    let schema = TestSchema::new();
    let forwarder = Forwarder::to_database().await;
    let store = store_behind(&forwarder, &schema).await;
    let idempotency = Idempotency::new(store)
        .with_store_timeout(Duration::from_secs(1))
        .with_lease(Duration::from_secs(10));
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let app = Router::new()
        .route("/orders", post(gated_order))
        .with_state(GatedState {
            runs: Arc::clone(&runs),
            gate: gate.clone(),
            idempotency,
        });
    let order = r#"{"item":"widget","qty":1}"#;

    // The database goes away after the claim, while the handler runs.
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "cut-off", order).await }
    });
    gate.started.notified().await;
    forwarder.cut().await;
    gate.answer.notify_one();
    let first = first.await.unwrap();
    assert_eq!(
        first.status(),
        StatusCode::CREATED,
        "the answer is not held back"
    );
    let first_body = body(first).await;

    // Back well within the lease: the response is stored after all, and the retry gets it.
    forwarder.restore().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let retry = send(&app, "cut-off", order).await;
        if retry.headers().contains_key("idempotent-replayed") {
            assert_eq!(body(retry).await, first_body);
            break;
        }
        assert!(
            matches!(
                retry.status(),
                StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
            ),
            "in flight (or the pool still reconnecting) until the response is stored, got {}",
            retry.status()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the response was never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

/// A migrated store in `schema` over one connection through `forwarder`, not pinged before
/// use, so every statement through the forwarder is the store's. (sqlx still pings it
/// when it goes back to the pool, off the request's path; `round_trips` leaves those
/// out.)
async fn store_through(forwarder: &Forwarder, schema: &TestSchema) -> PostgresStore {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(forwarder.connect_options().ssl_mode(PgSslMode::Disable))
        .await
        .unwrap();
    let store = PostgresStore::new(pool).with_schema(schema.name()).unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn each_protocol_step_is_one_statement_in_one_round_trip() {
    // Counted on the wire, as the server receives them: the messages the store's pool
    // sends through a forwarder to the real Postgres.
    let schema = TestSchema::new();
    let forwarder = Forwarder::to_database().await;
    let store = store_through(&forwarder, &schema).await;
    let (app, runs) = app(Idempotency::new(store.clone()));
    let order = r#"{"item":"widget","qty":1}"#;

    // sqlx prepares a statement on its first use on a connection, a round trip more, so
    // every statement is used once before counting.
    assert_eq!(
        send(&app, "warm-up", order).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(&app, "warm-up", order).await.status(),
        StatusCode::CREATED
    );
    let messages = forwarder.messages();
    let count = || (messages.statements(), messages.round_trips());

    messages.reset();
    let first = send(&app, "order-1", order).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(
        count(),
        (2, 2),
        "a first execution: the claim, then the completion"
    );

    messages.reset();
    let replay = send(&app, "order-1", order).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        count(),
        (1, 1),
        "a replay: the claim, which returns the record"
    );

    messages.reset();
    let other = send(&app, "order-1", r#"{"item":"widget","qty":2}"#).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        count(),
        (1, 1),
        "a mismatch: the claim, which returns the fingerprint"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // A lapsed lease is taken over by the claim itself, and the stale owner's completion
    // is refused by the one statement that would store it.
    let fingerprint = Fingerprint::of_bytes(b"job");
    let lease = Duration::from_millis(50);
    let claim = store.claim("job", fingerprint, lease).await.unwrap();
    let Claim::Acquired(stale) = claim else {
        panic!("{claim:?}")
    };
    tokio::time::sleep(lease * 3).await;
    messages.reset();
    let claim = store.claim("job", fingerprint, lease).await.unwrap();
    assert!(
        matches!(claim, Claim::Acquired(token) if token != stale),
        "{claim:?}"
    );
    assert_eq!(count(), (1, 1), "a takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_does_not_hold_the_key() {
    // The claim reaches Postgres and commits, then its connection drops before the answer
    // arrives. The request gets a 503; its retry must run at once, not meet a claim that
    // nobody owns and get 409 for a whole lease.
    let schema = TestSchema::new();
    let forwarder = Forwarder::to_database().await;
    // The muted statement is the claim itself.
    let store = store_through(&forwarder, &schema).await;
    let pool = store.pool().clone();
    let direct = store_in(schema.name()).await;
    // Long enough that only the lost connection, never the timeout, ends the claim.
    let idempotency = Idempotency::new(store).with_store_timeout(Duration::from_secs(30));
    let (app, runs) = app(idempotency);
    let order = r#"{"item":"widget","qty":1}"#;

    // The claim statement is prepared on the connection (the answer to a prepare is
    // needed before the statement runs), and the connection is back in the pool.
    assert_eq!(
        send(&app, "warm-up", order).await.status(),
        StatusCode::CREATED
    );
    while pool.num_idle() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    forwarder.mute();
    let lost = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "order-1", order).await }
    });
    while row_count(&direct).await < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    forwarder.sever();
    let lost = lost.await.unwrap();
    assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler did not run");

    let retry = send(&app, "order-1", order).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
