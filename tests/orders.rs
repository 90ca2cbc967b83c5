//! The `orders` example, driven through its own router: one request at a time through
//! `oneshot`, and over real HTTP on loopback for concurrent retries and disconnects.

#[path = "../examples/orders/app.rs"]
mod app;
#[path = "../examples/orders/cli.rs"]
mod cli;
#[path = "../examples/common/store.rs"]
mod store;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore};
use serde_json::{Value, json};
use tower::ServiceExt;

use app::Orders;
use support::counting::{Calls, Counting};

const JSON: &str = "application/json";
const PROBLEM: &str = "application/problem+json";

fn service(work: Duration) -> (Router, Orders) {
    let orders = Orders::new(work);
    let router = app::router(orders.clone(), Idempotency::new(MemoryStore::new()));
    (router, orders)
}

fn create(key: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::post("/orders").header("content-type", JSON);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

fn order(product: &str, quantity: i64) -> String {
    json!({"product": product, "quantity": quantity}).to_string()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

async fn list(router: &Router) -> Vec<Value> {
    let answer = send(router, Request::get("/orders").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some(JSON));
    match answer.json() {
        Value::Array(orders) => orders,
        other => panic!("GET /orders is not an array: {other}"),
    }
}

/// Waits for `cond`, failing the test after 10 s (a hang, not a slow machine).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("still waiting for {what} after 10 s");
}

#[tokio::test]
async fn a_retry_replays_the_created_order_without_creating_another() {
    let (router, orders) = service(Duration::ZERO);

    let first = send(&router, create(Some("k-1"), &order("book", 2))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("content-type"), Some(JSON));
    assert!(!first.replayed());
    let created = first.json();
    assert_eq!(created["product"], "book");
    assert_eq!(created["quantity"], 2);
    assert!(created["order_id"].as_str().unwrap().starts_with("ord_"));

    let retry = send(&router, create(Some("k-1"), &order("book", 2))).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(
        retry.body, first.body,
        "the replay is the first body, byte for byte"
    );
    assert_eq!(orders.executions(), 1);
    assert_eq!(list(&router).await, vec![created]);
}

#[tokio::test]
async fn the_same_key_with_another_order_is_422() {
    let (router, orders) = service(Duration::ZERO);
    let first = send(&router, create(Some("k-1"), &order("book", 2))).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let other = send(&router, create(Some("k-1"), &order("book", 3))).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.header("content-type"), Some(PROBLEM));
    assert_eq!(other.json()["status"], 422);
    assert_eq!(orders.executions(), 1);
    assert_eq!(list(&router).await.len(), 1);
}

#[tokio::test]
async fn the_same_order_reserialised_is_the_same_request() {
    let (router, orders) = service(Duration::ZERO);
    let first = send(
        &router,
        create(Some("k-1"), r#"{"product":"book","quantity":2}"#),
    )
    .await;
    let again = send(
        &router,
        create(Some("k-1"), "{ \"quantity\": 2,\n  \"product\": \"book\" }"),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(orders.executions(), 1);
}

#[tokio::test]
async fn a_create_without_a_key_is_400_and_creates_nothing() {
    let (router, orders) = service(Duration::ZERO);
    let answer = send(&router, create(None, &order("book", 1))).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.header("content-type"), Some(PROBLEM));
    let problem = answer.json();
    assert_eq!(problem["status"], 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("idempotency-key"),
        "{problem}"
    );
    assert_eq!(orders.executions(), 0);
    assert!(list(&router).await.is_empty());
}

#[tokio::test]
async fn an_invalid_quantity_is_400_and_releases_the_key() {
    let (router, orders) = service(Duration::ZERO);

    let rejected = send(&router, create(Some("k-1"), &order("book", 0))).await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
    assert_eq!(rejected.header("content-type"), Some(JSON));
    assert_eq!(rejected.json()["error"], "invalid_quantity");

    // Not stored: the retry runs the handler again instead of replaying the 400.
    let retry = send(&router, create(Some("k-1"), &order("book", 0))).await;
    assert_eq!(retry.status, StatusCode::BAD_REQUEST);
    assert!(!retry.replayed());
    assert_eq!(orders.executions(), 2);

    let negative = send(&router, create(Some("k-2"), &order("book", -3))).await;
    assert_eq!(negative.status, StatusCode::BAD_REQUEST);

    // The key is free again, even for a corrected order.
    let fixed = send(&router, create(Some("k-1"), &order("book", 1))).await;
    assert_eq!(fixed.status, StatusCode::CREATED);
    assert!(!fixed.replayed());
    assert_eq!(list(&router).await, vec![fixed.json()]);
}

#[tokio::test]
async fn malformed_json_gets_axums_rejection_and_releases_the_key() {
    let (router, orders) = service(Duration::ZERO);
    let answer = send(&router, create(Some("k-1"), r#"{"product": "book""#)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_ne!(answer.header("content-type"), Some(PROBLEM));
    assert_eq!(orders.executions(), 0);

    let fixed = send(&router, create(Some("k-1"), &order("book", 1))).await;
    assert_eq!(fixed.status, StatusCode::CREATED);
    assert!(!fixed.replayed());
}

#[tokio::test]
async fn get_orders_lists_exactly_the_created_orders() {
    let (router, _orders) = service(Duration::ZERO);
    assert!(list(&router).await.is_empty());

    let mut created = Vec::new();
    for (key, product) in [("a", "book"), ("b", "pen"), ("c", "lamp")] {
        let answer = send(&router, create(Some(key), &order(product, 1))).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        created.push(answer.json());
        // A replay and a rejected order add nothing.
        send(&router, create(Some(key), &order(product, 1))).await;
        send(&router, create(Some("bad"), &order(product, 0))).await;
    }
    assert_eq!(list(&router).await, created);

    let mut ids: Vec<_> = created.iter().map(|o| o["order_id"].clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "order ids are unique: {created:?}");
}

#[tokio::test]
async fn the_app_wide_lease_reaches_the_create_handler() {
    // The handler sets no `lease`, so the one given to `Idempotency` (`--lease-ms`)
    // applies, not the default of 60 s.
    let orders = Orders::new(Duration::from_secs(2));
    let calls = Calls::default();
    let store = Counting::new(MemoryStore::new(), &calls);
    let idempotency = Idempotency::new(store).with_lease(Duration::from_secs(5));
    let router = app::router(orders.clone(), idempotency);

    let first = tokio::spawn({
        let router = router.clone();
        async move { send(&router, create(Some("k-1"), &order("book", 1))).await }
    });
    until("the first request to start", || orders.executions() == 1).await;
    assert_eq!(calls.last_lease(), Some(Duration::from_secs(5)));
    let retry = send(&router, create(Some("k-1"), &order("book", 1))).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.header("content-type"), Some(PROBLEM));
    assert_eq!(retry.header("retry-after"), Some("1"));
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_dropped_request_still_creates_its_order_once() {
    let (router, orders) = service(Duration::from_millis(300));
    let request = tokio::spawn({
        let router = router.clone();
        async move { send(&router, create(Some("k-1"), &order("book", 1))).await }
    });
    until("the handler to start", || orders.executions() == 1).await;
    request.abort();
    assert!(matches!(request.await, Err(err) if err.is_cancelled()));

    until("the order to be created", || orders.list().len() == 1).await;
    let retry = send(&router, create(Some("k-1"), &order("book", 1))).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(
        retry.json(),
        serde_json::to_value(&orders.list()[0]).unwrap()
    );
    assert_eq!(orders.executions(), 1);
}

// Over real HTTP.

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn http_create(
    client: &reqwest::Client,
    addr: SocketAddr,
    key: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = client
        .post(format!("http://{addr}/orders"))
        .header("idempotency-key", key)
        .header("content-type", JSON)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_retries_over_http_create_one_order() {
    let (router, orders) = service(Duration::from_millis(300));
    let addr = serve(router).await;
    let client = reqwest::Client::new();
    let body = order("book", 1);

    let answers =
        futures::future::join_all((0..50).map(|_| http_create(&client, addr, "storm", &body)))
            .await;

    let mut created = Vec::new();
    let (mut replays, mut conflicts) = (Vec::new(), 0);
    for (status, headers, body) in answers {
        let replayed = headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        match status {
            StatusCode::CREATED if replayed => replays.push(body),
            StatusCode::CREATED => created.push(body),
            StatusCode::CONFLICT => {
                assert_eq!(headers["content-type"], PROBLEM);
                assert_eq!(headers["retry-after"], "1");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    assert_eq!(created.len(), 1, "exactly one request created the order");
    assert_eq!(created.len() + replays.len() + conflicts, 50);
    assert!(
        conflicts > 0,
        "some duplicates met the first one in flight, or nothing here ran concurrently"
    );
    assert!(replays.iter().all(|body| *body == created[0]));
    assert_eq!(orders.executions(), 1);

    let listed: Value = client
        .get(format!("http://{addr}/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created: Value = serde_json::from_slice(&created[0]).unwrap();
    assert_eq!(listed, json!([created]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_gets_the_replay_on_retry() {
    use tokio::io::AsyncWriteExt;

    let (router, orders) = service(Duration::from_millis(300));
    let addr = serve(router).await;
    let body = order("book", 1);

    // Send the request by hand and hang up while the payment call is under way.
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /orders HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: gone\r\n\
         content-type: {JSON}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    until("the handler to start", || orders.executions() == 1).await;
    drop(socket);

    // Until the handler finishes the retry is told to wait; then it gets the replay.
    let client = reqwest::Client::new();
    let mut waited = 0;
    let (status, headers, answer) = loop {
        let answer = http_create(&client, addr, "gone", &body).await;
        if answer.0 != StatusCode::CONFLICT || waited == 200 {
            break answer;
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    let listed = orders.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        serde_json::to_value(&listed[0]).unwrap()
    );
    assert_eq!(orders.executions(), 1);
}

// The command line.

fn parse(args: &[&str]) -> Result<cli::Command, String> {
    cli::parse(args.iter().map(|a| (*a).to_owned()))
}

#[test]
fn the_command_line_defaults() {
    let cli::Command::Run(options) = parse(&[]).unwrap() else {
        panic!("no arguments is a run");
    };
    assert_eq!(options.addr, "127.0.0.1:3000");
    assert_eq!(options.store, store::StoreUrl::Memory);
    assert_eq!(options.work, Duration::ZERO);
    assert_eq!(options.lease, Duration::from_secs(60));
}

#[tokio::test]
async fn the_default_store_serves_the_app() {
    let cli::Command::Run(options) = parse(&[]).unwrap() else {
        panic!("no arguments is a run");
    };
    let opened = options
        .store
        .open("unused", store::LocalCopies::Off)
        .await
        .unwrap();
    let idempotency = opened.idempotency.clone().with_lease(options.lease);
    assert_eq!(idempotency.lease(), Duration::from_secs(60));
    let orders = Orders::new(options.work);
    let router = app::router(orders.clone(), idempotency);
    let first = send(&router, create(Some("k-1"), &order("book", 1))).await;
    let retry = send(&router, create(Some("k-1"), &order("book", 1))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(orders.executions(), 1);
}

#[test]
fn the_command_line_takes_every_flag_in_both_forms() {
    let cli::Command::Run(options) = parse(&[
        "--addr",
        "0.0.0.0:8080",
        "--store=memory",
        "--work-ms",
        "250",
        "--lease-ms=1500",
    ])
    .unwrap() else {
        panic!("flags are a run");
    };
    assert_eq!(options.addr, "0.0.0.0:8080");
    assert_eq!(options.store, store::StoreUrl::Memory);
    assert_eq!(options.work, Duration::from_millis(250));
    assert_eq!(options.lease, Duration::from_millis(1500));
    assert_eq!(parse(&["--help"]), Ok(cli::Command::Help));
    assert_eq!(parse(&["--work-ms", "5", "-h"]), Ok(cli::Command::Help));
    assert!(cli::USAGE.contains("--lease-ms N"));
}

#[test]
fn the_command_line_rejects_mistakes_with_a_reason() {
    for (args, reason) in [
        (&["--port", "1"][..], "unknown option `--port`"),
        (&["serve"], "unexpected argument `serve`"),
        (&["--addr"], "`--addr` needs a value"),
        (&["--addr", "3000"], "HOST:PORT"),
        (&["--addr", "localhost:http"], "HOST:PORT"),
        (&["--work-ms", "-5"], "`--work-ms` must be a whole number"),
        (&["--work-ms", "1.5"], "`--work-ms` must be a whole number"),
        (&["--lease-ms", "0"], "at least 1"),
        (
            &["--work-ms", "1", "--work-ms", "2"],
            "given more than once",
        ),
        (&["--store", "mysql://db"], "unknown store `mysql://db`"),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}

#[cfg(feature = "redis")]
#[test]
fn every_redis_url_scheme_is_the_redis_store() {
    for url in [
        "redis://127.0.0.1:6379",
        "rediss://cache.internal:6380",
        "redis+unix:///run/redis/redis.sock",
    ] {
        let Ok(cli::Command::Run(options)) = parse(&["--store", url]) else {
            panic!("{url} is a run");
        };
        assert_eq!(options.store, store::StoreUrl::Redis(url.to_owned()));
    }
}

#[cfg(not(feature = "redis"))]
#[test]
fn a_redis_url_without_the_redis_feature_names_the_feature() {
    let err = parse(&["--store", "redis://:secret@127.0.0.1:6379"]).unwrap_err();
    assert!(err.contains("--features redis"), "{err}");
    assert!(!err.contains("secret"), "the password is not shown: {err}");
}

#[cfg(not(feature = "postgres"))]
#[test]
fn a_postgres_url_without_the_postgres_feature_names_the_feature() {
    let err = parse(&["--store", "postgres://postgres:secret@127.0.0.1:5432/test"]).unwrap_err();
    assert!(err.contains("--features postgres"), "{err}");
    assert!(!err.contains("secret"), "the password is not shown: {err}");
}

/// Two replicas of the example, each with its own connection to one shared store, as
/// `orders --store URL` on two ports would be: a storm spread over both creates one
/// order, and either replays it.
#[cfg(any(feature = "redis", feature = "postgres"))]
async fn two_replicas_share_the_keys(url: &str, schema: &str) {
    let store = store::StoreUrl::parse(url).unwrap();
    let (mut addrs, mut replicas, mut opened) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let open = store.open(schema, store::LocalCopies::Off).await.unwrap();
        let orders = Orders::new(Duration::from_millis(300));
        addrs.push(serve(app::router(orders.clone(), open.idempotency.clone())).await);
        replicas.push(orders);
        opened.push(open);
    }
    let client = reqwest::Client::new();
    let key = format!(
        "replicas-{:016x}",
        idempotent_runtime::FencingToken::random().0
    );
    let body = order("book", 1);
    let answers =
        futures::future::join_all((0..40).map(|i| http_create(&client, addrs[i % 2], &key, &body)))
            .await;
    let created = answers
        .iter()
        .filter(|(status, headers, _)| {
            *status == StatusCode::CREATED && !headers.contains_key("idempotent-replayed")
        })
        .count();
    assert_eq!(created, 1, "one order across both replicas");
    for (status, _, _) in &answers {
        assert!(matches!(
            *status,
            StatusCode::CREATED | StatusCode::CONFLICT
        ));
    }
    let executions: u64 = replicas.iter().map(Orders::executions).sum();
    assert_eq!(executions, 1);
    for addr in &addrs {
        let (status, headers, _) = http_create(&client, *addr, &key, &body).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["idempotent-replayed"], "true", "{addr} replays");
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_over_redis_create_one_order() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    two_replicas_share_the_keys(&url, "unused").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_over_postgres_create_one_order() {
    // Dropped with everything in it when the test ends, passed or failed.
    let schema = support::postgres::TestSchema::new();
    two_replicas_share_the_keys(&support::postgres::database_url(), schema.name()).await;
}
