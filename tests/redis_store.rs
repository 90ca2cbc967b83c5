//! What the Redis store promises beyond the conformance kit: one command per protocol
//! step, the key layout with the lease and the TTL as the record's expiry, prefixes,
//! corrupt data reported as a store error rather than a panic, and futures small enough
//! for the allocator's per-thread cache.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use idempotent_runtime::redis::aio::MultiplexedConnection;
use idempotent_runtime::redis::{self, AsyncCommands};
use idempotent_runtime::store::TieredStore;
use idempotent_runtime::{
    Claim, Fingerprint, Idempotency, MemoryStore, Record, RedisStore, Store, StoredResponse,
    idempotent, key,
};
use serde_json::{Value, json};
use support::redis_commands::{command_calls, ran, raw_connection};
use support::redis_server::{RedisServer, shared_url};
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Gate {
    entered: Arc<AtomicUsize>,
    open: Arc<Semaphore>,
}

impl Default for Gate {
    /// Closed.
    fn default() -> Self {
        Self {
            entered: Arc::default(),
            open: Arc::new(Semaphore::new(0)),
        }
    }
}

#[derive(Clone, FromRef)]
struct AppState {
    idempotency: Idempotency,
    gate: Gate,
    runs: Runs,
}

#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

#[idempotent]
async fn fast(State(runs): State<Runs>, Json(order): Json<Value>) -> impl IntoResponse {
    runs.0.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, Json(order))
}

/// Holds until the test opens the gate.
#[idempotent]
async fn gated(State(gate): State<Gate>) -> impl IntoResponse {
    gate.entered.fetch_add(1, Ordering::SeqCst);
    let _permit = gate.open.acquire().await;
    (StatusCode::CREATED, "done")
}

fn app(store: RedisStore, gate: Gate, runs: Runs) -> Router {
    Router::new()
        .route("/fast", post(fast))
        .route("/gated", post(gated))
        .with_state(AppState {
            idempotency: Idempotency::new(store),
            gate,
            runs,
        })
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn post_json(addr: SocketAddr, path: &str, key: &str, body: Value) -> (u16, bool) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{addr}{path}"))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (response.status().as_u16(), replayed)
}

/// What the server ran, as command → calls.
///
/// Redis counts the commands a script runs as well as the `EVALSHA` that ran it, so the
/// expected counts name both: the `SET` of a claim and the `EVALSHA`s are the round
/// trips, the rest must be exactly what the scripts do (see the scripts in the store's
/// docs), which leaves no room for any other command sent by a client.
fn expected(commands: &[(&str, u64)]) -> HashMap<String, u64> {
    commands
        .iter()
        .map(|(name, calls)| ((*name).to_owned(), *calls))
        .collect()
}

/// A claim whose answer comes too late (Redis stalled past the client's 500 ms response
/// timeout) still runs once Redis resumes. It must not then hold the key for its lease
/// with nobody to complete it: the next claim gets the key.
#[tokio::test]
async fn a_claim_that_got_no_answer_does_not_hold_the_key() {
    let server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let fingerprint = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(60);
    // Paused until the claim has failed, however slow the machine: the claim, and the
    // release the store sends after it, then run in the order they were sent, before
    // any later command on that connection.
    server
        .cli(&["CLIENT", "PAUSE", "60000", "WRITE"])
        .expect("pause");
    assert!(
        store.claim("k", fingerprint, lease).await.is_err(),
        "no answer within the response timeout"
    );
    server.cli(&["CLIENT", "UNPAUSE"]).expect("unpause");
    assert!(
        matches!(
            store.claim("k", fingerprint, lease).await.unwrap(),
            Claim::Acquired(_)
        ),
        "the claim that got no answer was taken back"
    );
}

/// Each protocol step is one command, counted by the server itself. A server of its own,
/// because the shared one counts every other test's commands too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_step_is_one_command() {
    let server = RedisServer::start();
    // `connect` loads the scripts, so no request below pays for a NOSCRIPT round trip.
    let store = RedisStore::connect(server.url()).await.unwrap();
    let (gate, runs) = (Gate::default(), Runs::default());
    let addr = serve(app(store, gate.clone(), runs.clone())).await;
    let mut stats = raw_connection(&server.url()).await;
    let order = json!({"item": "widget", "qty": 1});

    // A first execution: claim (acquired), then complete; nothing else for a fast handler.
    let before = command_calls(&mut stats).await;
    assert_eq!(
        post_json(addr, "/fast", "k1", order.clone()).await,
        (201, false)
    );
    let after = command_calls(&mut stats).await;
    assert_eq!(
        ran(&before, &after),
        expected(&[("set", 2), ("evalsha", 1), ("get", 1)]),
        "a first execution is claim (a SET) + complete (a script: GET, SET)"
    );

    // A replay: one command (the claim's SET, which finds the completed record).
    let before = after;
    assert_eq!(
        post_json(addr, "/fast", "k1", order.clone()).await,
        (201, true)
    );
    let after = command_calls(&mut stats).await;
    let read_completed = [("set", 1)];
    assert_eq!(
        ran(&before, &after),
        expected(&read_completed),
        "a replay is one command"
    );

    // The same key with another body: one command to find out.
    let before = after;
    let other = json!({"item": "widget", "qty": 2});
    assert_eq!(post_json(addr, "/fast", "k1", other).await, (422, false));
    let after = command_calls(&mut stats).await;
    assert_eq!(
        ran(&before, &after),
        expected(&read_completed),
        "a mismatch is one command"
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);

    // A conflict with a request in flight: one command (claim, which finds it in flight).
    let first = tokio::spawn(post_json(addr, "/gated", "k2", json!({})));
    let entered = async {
        while gate.entered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), entered)
        .await
        .expect("the first request's handler ran");
    let before = command_calls(&mut stats).await;
    assert_eq!(
        post_json(addr, "/gated", "k2", json!({})).await,
        (409, false)
    );
    let after = command_calls(&mut stats).await;
    assert_eq!(
        ran(&before, &after),
        expected(&[("set", 1)]),
        "a conflict is one command"
    );

    // The held request completes: one command.
    let before = after;
    gate.open.add_permits(1);
    assert_eq!(first.await.unwrap(), (201, false));
    let after = command_calls(&mut stats).await;
    assert_eq!(
        ran(&before, &after),
        expected(&[("evalsha", 1), ("get", 1), ("set", 1)]),
        "completion is one command"
    );
}

/// A store on the shared server, under a prefix of its own named after `name`.
async fn store_on_shared_server(name: &str) -> RedisStore {
    RedisStore::connect(shared_url())
        .await
        .unwrap()
        .with_prefix(support::unique_prefix(name))
}

/// Up to [`support::ALLOCATOR_CACHE`]. The Redis claim's future was 1.1 KB, for the
/// rarely taken release of a claim that failed, and a tiered store's claim and completion
/// about as much; kept under the limit, Redis replays under load consolidated the
/// allocator's bins a fifth less often and served 1 to 3 % more requests.
#[tokio::test]
async fn the_futures_of_a_claim_and_a_completion_fit_the_allocators_cache() {
    let redis = store_on_shared_server("sizes").await;
    let tiered = TieredStore::new(redis.clone(), MemoryStore::new());
    let (fingerprint, lease) = (Fingerprint::of_bytes(b"{}"), Duration::from_secs(1));
    let token = idempotent_runtime::FencingToken::random();
    let response = StoredResponse::new(StatusCode::OK, Default::default(), "x".into());
    let sizes = [
        (
            "Redis claim",
            size_of_val(&redis.claim("k", fingerprint, lease)),
        ),
        (
            "Redis completion",
            size_of_val(&redis.complete("k", token, &response, lease)),
        ),
        (
            "tiered claim",
            size_of_val(&tiered.claim("k", fingerprint, lease)),
        ),
        (
            "tiered completion",
            size_of_val(&tiered.complete("k", token, &response, lease)),
        ),
    ];
    for (future, size) in sizes {
        assert!(size <= support::ALLOCATOR_CACHE, "{future}: {size} bytes");
    }
}

async fn pttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    conn.pttl(key).await.unwrap()
}

/// One string per key, under `<prefix>:{<key>}`; its expiry is the lease while in flight
/// and the TTL, independent of the lease, once completed.
#[tokio::test]
async fn a_record_is_one_string_that_expires_with_its_lease_then_its_ttl() {
    let prefix = support::unique_prefix("layout");
    let store = RedisStore::connect(shared_url())
        .await
        .unwrap()
        .with_prefix(&prefix);
    let mut conn = raw_connection(&shared_url()).await;
    let redis_key = format!("{prefix}:{{k}}");
    assert_eq!(store.record_key("k"), redis_key);
    let fp = Fingerprint::of_bytes(b"body");
    let lease = Duration::from_secs(60);

    let Claim::Acquired(token) = store.claim("k", fp, lease).await.unwrap() else {
        panic!("a free key is acquired");
    };
    let kind: String = redis::cmd("TYPE")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "string");
    let record: Vec<u8> = conn.get(&redis_key).await.unwrap();
    assert_eq!(
        record.len(),
        57,
        "state, fingerprint, token, deadline, lease"
    );
    assert_eq!(record[0], b'I');
    assert_eq!(&record[1..33], fp.as_bytes());
    assert_eq!(&record[33..41], &token.0.to_be_bytes());
    assert_eq!(&record[49..57], &60_000u64.to_be_bytes());
    let left = pttl(&mut conn, &redis_key).await;
    assert!(
        0 < left && left <= 60_000,
        "the lease is the expiry: {left} ms"
    );

    assert!(
        store
            .renew("k", token, Duration::from_secs(120))
            .await
            .unwrap()
    );
    let left = pttl(&mut conn, &redis_key).await;
    assert!(
        60_000 < left && left <= 120_000,
        "renewal extends it: {left} ms"
    );
    match store.lookup("k").await.unwrap() {
        Some(Record::InFlight {
            fingerprint,
            lease_remaining,
        }) => {
            assert_eq!(fingerprint, fp);
            assert!(
                Duration::from_secs(60) < lease_remaining
                    && lease_remaining <= Duration::from_secs(120),
                "the record tells the renewed lease: {lease_remaining:?}"
            );
        }
        other => panic!("still in flight after renewal, got {other:?}"),
    }

    let response = StoredResponse::new(StatusCode::CREATED, Default::default(), "ok".into());
    assert!(
        store
            .complete("k", token, &response, Duration::from_secs(3600))
            .await
            .unwrap()
    );
    let left = pttl(&mut conn, &redis_key).await;
    assert!(
        120_000 < left && left <= 3_600_000,
        "the TTL replaces the lease: {left} ms"
    );
    let record: Vec<u8> = conn.get(&redis_key).await.unwrap();
    assert_eq!(record[0], b'C');
    assert_eq!(&record[1..33], fp.as_bytes());
    assert_eq!(StoredResponse::from_bytes(&record[33..]).unwrap(), response);
}

/// Stores with different prefixes share a server without seeing each other.
#[tokio::test]
async fn prefixes_separate_apps_on_one_server() {
    let base = RedisStore::connect(shared_url()).await.unwrap();
    let a = base.clone().with_prefix(support::unique_prefix("a"));
    let b = base.with_prefix(support::unique_prefix("b"));
    let fp = Fingerprint::of_bytes(b"x");
    let lease = Duration::from_secs(30);
    assert!(matches!(
        a.claim("k", fp, lease).await.unwrap(),
        Claim::Acquired(_)
    ));
    assert!(matches!(
        b.claim("k", fp, lease).await.unwrap(),
        Claim::Acquired(_)
    ));
    assert!(matches!(
        a.lookup("k").await.unwrap(),
        Some(Record::InFlight { .. })
    ));
}

/// Whatever is found under a record's key, the store answers with an error, never a
/// panic, and the protocol fails closed on it: 503, the handler not run.
#[tokio::test]
async fn corrupt_records_are_store_errors() {
    let store = store_on_shared_server("corrupt").await;
    let mut conn = raw_connection(&shared_url()).await;
    let fp = Fingerprint::of_bytes(b"x");
    let lease = Duration::from_secs(30);
    let with = |state: u8, tail: &[u8]| [&[state][..], fp.as_bytes(), tail].concat();

    // Strings that are not what the store writes.
    let cases: [(&str, Vec<u8>); 6] = [
        ("empty", Vec::new()),
        ("garbage", b"garbage".to_vec()),
        ("unknown-state", with(b'P', b"")),
        ("short-in-flight", with(b'I', &[0; 8])),
        ("bad-response", with(b'C', b"IDR1garbage")),
        ("no-response", with(b'C', b"")),
    ];
    for (name, value) in &cases {
        let _: () = conn.set(store.record_key(name), value).await.unwrap();
    }
    // Another type under the key.
    let _: () = conn
        .hset(store.record_key("hash"), "state", "completed")
        .await
        .unwrap();
    for name in std::iter::once("hash").chain(cases.iter().map(|(name, _)| *name)) {
        let err = store
            .claim(name, fp, lease)
            .await
            .err()
            .unwrap_or_else(|| panic!("claim of `{name}` must fail"));
        assert!(
            err.to_string().contains(&store.record_key(name)) || name == "hash",
            "{name}: {err}"
        );
        assert!(
            store.lookup(name).await.is_err(),
            "lookup of `{name}` must fail"
        );
    }
    let token = idempotent_runtime::FencingToken::random();
    let response = StoredResponse::new(StatusCode::OK, Default::default(), "x".into());
    // A key of another type is no claim to renew, complete or release...
    assert!(store.renew("hash", token, lease).await.is_err());
    assert!(
        store
            .complete("hash", token, &response, lease)
            .await
            .is_err()
    );
    assert!(store.release("hash", token).await.is_err());
    // ...and neither is a corrupt record, which stays as it is.
    for (name, value) in &cases {
        assert!(!store.renew(name, token, lease).await.unwrap(), "{name}");
        assert!(
            !store.complete(name, token, &response, lease).await.unwrap(),
            "{name}"
        );
        assert!(!store.release(name, token).await.unwrap(), "{name}");
        let kept: Vec<u8> = conn.get(store.record_key(name)).await.unwrap();
        assert_eq!(&kept, value, "{name}");
    }

    // Through the protocol: fail closed.
    let runs = Runs::default();
    let addr = serve(app(store.clone(), Gate::default(), runs.clone())).await;
    let record = store.record_key(&key::namespace("POST", "/fast", None, "corrupt"));
    let _: () = conn.set(&record, "garbage").await.unwrap();
    assert_eq!(
        post_json(addr, "/fast", "corrupt", json!({})).await,
        (503, false)
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 0, "the handler must not run");
    let _: () = conn.del(&record).await.unwrap();
    for name in std::iter::once("hash").chain(cases.iter().map(|(name, _)| *name)) {
        let _: () = conn.del(store.record_key(name)).await.unwrap();
    }
}

/// Claims issued in the same turn go to Redis as one pipeline, and each gets its own
/// answer: in order, and with an error for the one that fails alone.
#[tokio::test]
async fn claims_sent_together_each_get_their_own_answer() {
    let store = store_on_shared_server("together").await;
    let mut conn = raw_connection(&shared_url()).await;
    let _: () = conn
        .hset(store.record_key("hash"), "state", "completed")
        .await
        .unwrap();
    let fp = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(30);
    let Claim::Acquired(token) = store.claim("done", fp, lease).await.unwrap() else {
        panic!("a new key is acquired")
    };
    let response = StoredResponse::new(StatusCode::CREATED, Default::default(), "7".into());
    assert!(
        store
            .complete("done", token, &response, lease)
            .await
            .unwrap()
    );

    // Polled together, in one task: one turn.
    let (first, other, hash, done, again) = tokio::join!(
        store.claim("a", fp, lease),
        store.claim("b", fp, lease),
        store.claim("hash", fp, lease),
        store.claim("done", fp, lease),
        store.claim("a", fp, lease),
    );
    assert!(matches!(first, Ok(Claim::Acquired(_))), "{first:?}");
    assert!(matches!(other, Ok(Claim::Acquired(_))), "{other:?}");
    assert!(
        hash.is_err(),
        "another type under the key fails its claim alone"
    );
    assert!(
        matches!(done, Ok(Claim::Existing(Record::Completed { ref response, .. })) if response.body().as_ref() == b"7"),
        "{done:?}"
    );
    assert!(
        matches!(again, Ok(Claim::Existing(Record::InFlight { .. }))),
        "the second claim of `a` comes after the first: {again:?}"
    );
}

/// Requests that claim in the same turn of the scheduler, each in a task of its own as
/// requests are, reach Redis in one write: the server reads them in one go, where each
/// command used to come in a read of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn claims_of_one_turn_reach_redis_in_one_write() {
    let server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let reads = || -> u64 {
        let info = server.cli(&["INFO", "stats"]).expect("INFO stats");
        info.lines()
            .find_map(|line| line.strip_prefix("total_reads_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("Redis counts its reads")
    };
    let fp = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(30);
    let before = reads();
    // Spawned from a task on the runtime's one worker, the claims all start in one turn.
    let tasks = tokio::spawn({
        let store = store.clone();
        async move {
            (0..50)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { store.claim(&format!("k{i}"), fp, lease).await })
                })
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Ok(Claim::Acquired(_))));
    }
    // The second `INFO` is a read too.
    let read = reads() - before - 1;
    assert!(read <= 3, "50 claims came in {read} reads");
}

/// A claim given up before its turn ended never reaches Redis, and the claims queued
/// behind it are still sent.
#[tokio::test]
async fn a_claim_given_up_before_it_was_sent_leaves_nothing_and_holds_up_no_other() {
    let store = store_on_shared_server("given-up").await;
    let fp = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(30);
    let mut first = Box::pin(store.claim("first", fp, lease));
    let mut second = Box::pin(store.claim("second", fp, lease));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(first.as_mut().poll(&mut cx).is_pending());
    assert!(second.as_mut().poll(&mut cx).is_pending());
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the claim behind the one given up is answered");
    assert!(matches!(second, Ok(Claim::Acquired(_))), "{second:?}");
    assert!(
        matches!(
            store.claim("first", fp, lease).await,
            Ok(Claim::Acquired(_))
        ),
        "the claim given up was never sent"
    );
}

/// A batch goes out even if the request whose command started it is held without
/// being polled again: the other commands of its turn are answered, and so is it.
#[tokio::test]
async fn a_batch_goes_out_even_if_its_first_request_is_not_polled_again() {
    let store = store_on_shared_server("held").await;
    let fp = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(30);
    let mut held = Box::pin(store.claim("held", fp, lease));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(held.as_mut().poll(&mut cx).is_pending());
    let other = tokio::time::timeout(Duration::from_secs(5), store.claim("other", fp, lease))
        .await
        .expect("the other command of the turn is answered");
    assert!(matches!(other, Ok(Claim::Acquired(_))), "{other:?}");
    let held = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held request's answer waits for it");
    assert!(matches!(held, Ok(Claim::Acquired(_))), "{held:?}");
}

/// A batch whose task never ran, because its runtime shut down first, holds up no later
/// command: the same store, used from another runtime, is answered again.
#[test]
fn a_batch_lost_with_its_runtime_holds_up_no_later_command() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let fp = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(30);
    let first = runtime();
    let store = first.block_on(store_on_shared_server("lost-batch"));
    first.block_on(async {
        // Queued, and its batch's task spawned, but the runtime stops before that task runs.
        let mut lost = Box::pin(store.claim("lost", fp, lease));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(lost.as_mut().poll(&mut cx).is_pending());
    });
    drop(first);
    runtime().block_on(async {
        // The connection's own task went with the first runtime: the client reconnects
        // on this one after a failed command or two.
        for _ in 0..10 {
            let claim =
                tokio::time::timeout(Duration::from_secs(2), store.claim("after", fp, lease));
            match claim.await {
                Ok(Ok(Claim::Acquired(_))) => return,
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(other) => panic!("{other:?}"),
                Err(_) => panic!("a command waited behind the lost batch"),
            }
        }
        panic!("no claim was answered on the second runtime");
    });
}

/// A server that forgot the scripts (restarted without them, or `SCRIPT FLUSH`ed) gets
/// them again on first use: renew, complete and release still work, also when their
/// commands go to Redis together with others.
#[tokio::test]
async fn scripts_the_server_forgot_are_loaded_again() {
    let server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let fp = Fingerprint::of_bytes(b"order");
    let lease = Duration::from_secs(30);
    let (Ok(Claim::Acquired(a)), Ok(Claim::Acquired(b)), Ok(Claim::Acquired(c))) = tokio::join!(
        store.claim("a", fp, lease),
        store.claim("b", fp, lease),
        store.claim("c", fp, lease),
    ) else {
        panic!("new keys are acquired")
    };
    server.cli(&["SCRIPT", "FLUSH"]).expect("flush the scripts");
    let response = StoredResponse::new(StatusCode::CREATED, Default::default(), "7".into());
    let (renewed, completed, released) = tokio::join!(
        store.renew("a", a, lease),
        store.complete("b", b, &response, lease),
        store.release("c", c),
    );
    assert!(renewed.unwrap(), "renewed");
    assert!(completed.unwrap(), "completed");
    assert!(released.unwrap(), "released");
    assert!(matches!(
        store.lookup("b").await,
        Ok(Some(Record::Completed { .. }))
    ));
    assert!(matches!(store.lookup("c").await, Ok(None)));
}
