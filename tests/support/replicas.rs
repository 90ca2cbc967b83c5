//! Several instances of one app over one shared store, each on its own loopback port,
//! driven with real HTTP: what a deployment behind a load balancer looks like.
//!
//! Generic over the store: each replica gets its own store (its own connection) from a
//! factory, so the same checks ([`storm_runs_the_handler_once_per_key`],
//! [`dead_replicas_request_is_taken_over_after_its_lease`]) run for every shared store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use idempotent_runtime::{Idempotency, Record, Store, idempotent, key};
use serde_json::{Value, json};

/// The header that makes the handler sleep, in milliseconds.
pub const SLEEP_HEADER: &str = "x-sleep-ms";

/// What every replica shares with the test: how often the handler ran, in total.
#[derive(Clone, Default)]
pub struct Runs(Arc<AtomicUsize>);

impl Runs {
    /// Handler executions so far, over all replicas.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Replica {
    index: usize,
    runs: Runs,
}

#[derive(Clone, FromRef)]
struct AppState {
    idempotency: Idempotency,
    replica: Replica,
}

#[derive(serde::Deserialize)]
struct OrderCreate {
    item: String,
    qty: u32,
}

#[idempotent(ttl = "1h")]
async fn create_order(
    State(replica): State<Replica>,
    headers: HeaderMap,
    Json(order): Json<OrderCreate>,
) -> impl IntoResponse {
    let run = replica.runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    let sleep = headers
        .get(SLEEP_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(ms) = sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "item": order.item,
            "qty": order.qty,
            "run": run,
            "replica": replica.index,
        })),
    )
}

/// The app every replica runs: `POST /orders`, idempotent.
fn app(idempotency: Idempotency, index: usize, runs: Runs) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .with_state(AppState {
            idempotency,
            replica: Replica { index, runs },
        })
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// An answer, as a client sees it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub replayed: bool,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub body: Value,
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Order {
    pub key: String,
    pub body: Value,
    pub sleep_ms: Option<u64>,
}

impl Order {
    /// `{"item": "widget", "qty": 1}` under `key`.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            body: json!({"item": "widget", "qty": 1}),
            sleep_ms: None,
        }
    }

    /// Makes the handler take `ms` milliseconds.
    pub fn sleeping(mut self, ms: u64) -> Self {
        self.sleep_ms = Some(ms);
        self
    }
}

/// An HTTP client for the replicas.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a plain HTTP client builds");
        Self { http }
    }

    /// Posts `order` to the replica at `addr`; `Err` if no answer came (connection lost).
    pub async fn post(&self, addr: SocketAddr, order: &Order) -> Result<Answer, reqwest::Error> {
        let mut request = self
            .http
            .post(format!("http://{addr}/orders"))
            .header("idempotency-key", &order.key)
            .json(&order.body);
        if let Some(ms) = order.sleep_ms {
            request = request.header(SLEEP_HEADER, ms.to_string());
        }
        let response = request.send().await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = response.status().as_u16();
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let content_type = header("content-type");
        let retry_after = header("retry-after");
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Answer {
            status,
            replayed,
            content_type,
            retry_after,
            body,
        })
    }
}

/// `n` replicas of the app, each with its own store from the factory, served on the
/// current runtime.
pub struct Replicas {
    addrs: Vec<SocketAddr>,
    runs: Runs,
}

impl Replicas {
    /// Starts `n` replicas; `configure` sets the `Idempotency` of each (lease, timeouts).
    pub async fn start<S, F, Fut>(
        n: usize,
        mut store: F,
        configure: impl Fn(Idempotency) -> Idempotency,
    ) -> Self
    where
        S: Store,
        F: FnMut() -> Fut,
        Fut: Future<Output = S>,
    {
        let runs = Runs::default();
        let mut addrs = Vec::with_capacity(n);
        for index in 0..n {
            let idempotency = configure(Idempotency::new(store().await));
            addrs.push(serve(app(idempotency, index, runs.clone())).await);
        }
        Self { addrs, runs }
    }

    /// The replicas' addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The handler executions of all replicas together.
    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// Sends every order at once, the `i`-th to replica `i % n`; the answers in order.
    pub async fn storm(&self, client: &Client, orders: &[Order]) -> Vec<Answer> {
        let start = Arc::new(tokio::sync::Barrier::new(orders.len()));
        let tasks: Vec<_> = orders
            .iter()
            .enumerate()
            .map(|(i, order)| {
                let (client, order, start) = (client.clone(), order.clone(), Arc::clone(&start));
                let addr = self.addrs[i % self.addrs.len()];
                tokio::spawn(async move {
                    start.wait().await;
                    client.post(addr, &order).await
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(err)) => panic!("a replica did not answer: {err}"),
                Err(err) => panic!("a request task failed: {err}"),
            }
        }
        answers
    }
}

/// A replica in a tokio runtime of its own, on a thread of its own, that can be killed
/// like a crashed process: its tasks stop where they are, nothing runs to clean up.
pub struct KillableReplica {
    addr: SocketAddr,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableReplica {
    /// Starts one replica whose store is made by `store` inside the replica's runtime
    /// (a connection belongs to the runtime it was made in), counting into `runs`.
    pub fn start<S, F, Fut>(
        runs: &Runs,
        store: F,
        configure: impl FnOnce(Idempotency) -> Idempotency + Send + 'static,
    ) -> Self
    where
        S: Store,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = S>,
    {
        let runs = runs.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime builds");
            let addr = runtime.block_on(async move {
                let idempotency = configure(Idempotency::new(store().await));
                serve(app(idempotency, usize::MAX, runs)).await
            });
            let _ = ready_tx.send(addr);
            // Until killed (or the test is gone); then drop every task mid-flight.
            let _ = kill_rx.recv();
            runtime.shutdown_background();
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the killable replica started");
        Self {
            addr,
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it at once: its handlers and lease renewals stop mid-flight.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KillableReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

// The end-to-end checks every shared store passes, each over replicas of its own with
// stores made by the factory it is given.

/// A 409 as the protocol sends it for a key in flight: problem details that say when to
/// retry.
pub fn is_conflict(answer: &Answer) -> bool {
    answer.status == 409
        && answer.content_type.as_deref() == Some("application/problem+json")
        && answer.retry_after.is_some()
}

/// Requests with the same key, spread over four replicas at once: the handler runs once
/// per key in total; every other answer is a 409 or the replay of that one response, and
/// afterwards every replica replays it.
pub async fn storm_runs_the_handler_once_per_key<S, F, Fut>(store: F)
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let replicas = Replicas::start(4, store, |i| i).await;
    let client = Client::new();
    let keys = ["order-a", "order-b", "order-c"];
    // The handler takes a while, so that the storm hits it in flight, not only replays.
    let orders: Vec<Order> = (0..120)
        .map(|i| Order::new(keys[i % keys.len()]).sleeping(300))
        .collect();

    let answers = replicas.storm(&client, &orders).await;

    assert_eq!(
        replicas.runs().get(),
        keys.len(),
        "one execution per key over all replicas"
    );
    for key in keys {
        let answers: Vec<&Answer> = orders
            .iter()
            .zip(&answers)
            .filter(|(order, _)| order.key == key)
            .map(|(_, answer)| answer)
            .collect();
        let first: Vec<&&Answer> = answers
            .iter()
            .filter(|a| a.status == 201 && !a.replayed)
            .collect();
        assert_eq!(
            first.len(),
            1,
            "{key}: exactly one request ran, got {first:?}"
        );
        let original = &first[0].body;
        for answer in &answers {
            let replay = answer.status == 201 && answer.replayed && answer.body == *original;
            let fresh = answer.status == 201 && !answer.replayed;
            assert!(
                fresh || replay || is_conflict(answer),
                "{key}: every other answer is a replay of {original} or a 409, got {answer:?}"
            );
        }
        for &addr in replicas.addrs() {
            let answer = client
                .post(addr, &Order::new(key))
                .await
                .unwrap_or_else(|e| panic!("a replica did not answer: {e}"));
            assert!(answer.status == 201 && answer.replayed, "{answer:?}");
            assert_eq!(answer.body, *original);
        }
    }
    assert_eq!(replicas.runs().get(), keys.len());
}

/// A replica dies in the middle of a request, so its lease renewals stop. Another replica
/// answers 409 while the lease lasts, and runs the request itself once it has lapsed,
/// never before.
///
/// `store` is called in the test's runtime, for the survivor and to read the lease, and
/// once in the dying replica's own.
pub async fn dead_replicas_request_is_taken_over_after_its_lease<S, F, Fut>(store: F)
where
    S: Store,
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = S>,
{
    const LEASE: Duration = Duration::from_secs(3);
    let survivor = Replicas::start(1, store.clone(), |i: Idempotency| i.with_lease(LEASE)).await;
    let survivor_addr = survivor.addrs()[0];
    // Both count into one tally.
    let runs = survivor.runs().clone();
    // Reads the lease the dying replica holds.
    let probe = store().await;
    let mut dying = KillableReplica::start(&runs, store, |i| i.with_lease(LEASE));
    let client = Client::new();
    let order = Order::new("order-1");
    let post = |order: Order| {
        let client = client.clone();
        async move {
            client
                .post(survivor_addr, &order)
                .await
                .unwrap_or_else(|e| panic!("the surviving replica did not answer: {e}"))
        }
    };

    // A request that would take a minute; it has begun once the handler ran.
    let slow = {
        let (client, order, addr) = (client.clone(), order.clone(), dying.addr());
        tokio::spawn(async move { client.post(addr, &order.sleeping(60_000)).await })
    };
    let started = async {
        while runs.get() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the slow request's handler ran");
    // The handler outlives its first lease: the owner's renewals keep the key.
    tokio::time::sleep(LEASE * 3 / 2).await;
    let answer = post(order.clone()).await;
    assert!(
        is_conflict(&answer),
        "a live owner keeps the key: {answer:?}"
    );

    // The lease as the store holds it just before the owner dies: it lapses no sooner
    // than `left` after `asked`, whenever the last renewal came.
    let stored_key = key::namespace("POST", "/orders", None, &order.key);
    let asked = Instant::now();
    let left = match probe.lookup(&stored_key).await {
        Ok(Some(Record::InFlight {
            lease_remaining, ..
        })) => lease_remaining,
        other => panic!("the slow request's claim must be in flight: {other:?}"),
    };
    dying.kill();
    assert!(
        matches!(slow.await, Ok(Err(_))),
        "the dead replica's request gets no answer"
    );

    let mut conflicts = 0;
    let taken_over = loop {
        let answer = post(order.clone()).await;
        if answer.status == 201 {
            break answer;
        }
        assert!(
            is_conflict(&answer),
            "until the lease lapses: 409, got {answer:?}"
        );
        conflicts += 1;
        assert!(asked.elapsed() < LEASE * 10, "the key was never taken over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Answered after the takeover, which came after the lease lapsed. (A millisecond for
    // the store's rounding of the time left.)
    let waited = asked.elapsed();
    assert!(
        waited + Duration::from_millis(1) >= left,
        "taken over {waited:?} after the owner's lease had {left:?} left, after {conflicts} conflicts"
    );
    assert!(!taken_over.replayed, "the survivor ran the request itself");
    assert_eq!(runs.get(), 2, "the dead replica's run and the survivor's");
    let replay = post(order).await;
    assert!(
        replay.replayed && replay.body == taken_over.body,
        "{replay:?}"
    );
}
