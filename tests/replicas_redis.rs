//! Several app replicas over one Redis, end to end over real HTTP: a storm of retries,
//! a replica that dies mid-request, and Redis itself going away and coming back.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use idempotent_runtime::store::TieredStore;
use idempotent_runtime::{Idempotency, MemoryStore, RedisStore};
use support::redis_server::{RedisServer, shared_url};
use support::replicas::{self, Client, Order, Replicas};

async fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} (scripts/services.sh starts it): {e}"))
        .with_prefix(prefix)
}

/// Requests with the same key, spread over four replicas at once: the handler runs once
/// per key in total; every other answer is a 409 or the replay of that one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_replicas_runs_the_handler_once_per_key() {
    let prefix = support::unique_prefix("storm");
    let url = shared_url();
    replicas::storm_runs_the_handler_once_per_key(|| store(&url, &prefix)).await;
}

/// The same storm with each replica keeping copies of completed responses in its own
/// memory: Redis still decides every claim, so the handler still runs once per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_replicas_with_copies_in_memory_runs_the_handler_once_per_key() {
    let prefix = support::unique_prefix("storm-copies");
    let url = shared_url();
    replicas::storm_runs_the_handler_once_per_key(|| async {
        TieredStore::new(store(&url, &prefix).await, MemoryStore::new())
    })
    .await;
}

/// A replica dies in the middle of a request: another answers 409 while the lease lasts,
/// and runs the request itself once it has lapsed, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replicas_request_is_taken_over_after_its_lease() {
    let prefix = support::unique_prefix("takeover");
    let url = shared_url();
    replicas::dead_replicas_request_is_taken_over_after_its_lease(move || {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move { store(&url, &prefix).await }
    })
    .await;
}

/// Redis goes away: requests get 503 and no handler runs. It comes back on the same
/// address: the same app, not restarted, answers normally again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_app_fails_closed_without_redis_and_recovers_when_it_returns() {
    let mut server = RedisServer::start();
    let url = server.url();
    let replicas = Replicas::start(
        1,
        || store(&url, "outage"),
        // Short enough that the outage is quick to answer, long enough that a busy
        // machine does not turn a live Redis into a 503.
        |i: Idempotency| i.with_store_timeout(Duration::from_secs(2)),
    )
    .await;
    let addr = replicas.addrs()[0];
    let client = Client::new();

    let first = client.post(addr, &Order::new("before")).await.unwrap();
    assert_eq!(first.status, 201);

    server.kill();
    for key in ["before", "during-1", "during-2"] {
        let answer = client.post(addr, &Order::new(key)).await.unwrap();
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/problem+json")
        );
        assert!(answer.retry_after.is_some(), "503 says when to retry");
        assert!(
            answer.body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("#store-unavailable")),
            "{answer:?}"
        );
    }
    assert_eq!(
        replicas.runs().get(),
        1,
        "no handler runs without the store"
    );

    server.restart();
    // The connection comes back by itself; each attempt uses a fresh key, so an attempt
    // whose claim reached Redis just as it timed out cannot get in the way of the next.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    let (key, recovered) = loop {
        attempt += 1;
        let key = format!("after-{attempt}");
        let answer = client.post(addr, &Order::new(&key)).await.unwrap();
        if answer.status != 503 {
            break (key, answer);
        }
        assert!(Instant::now() < deadline, "the app did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        recovered.status == 201 && !recovered.replayed,
        "{recovered:?}"
    );
    assert_eq!(
        replicas.runs().get(),
        2,
        "only the request that got through ran"
    );
    let replay = client.post(addr, &Order::new(&key)).await.unwrap();
    assert!(replay.status == 201 && replay.replayed, "{replay:?}");
}
