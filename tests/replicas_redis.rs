//! Several app replicas over one Redis, end to end over real HTTP: a storm of retries,
//! a replica that dies mid-request, and Redis itself going away and coming back.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use idempotent_runtime::{Idempotency, RedisStore};
use support::redis_server::{RedisServer, shared_url};
use support::replicas::{Answer, Client, KillableReplica, Order, Replicas};

async fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} (scripts/services.sh starts it): {e}"))
        .with_prefix(prefix)
}

fn is_conflict(answer: &Answer) -> bool {
    answer.status == 409
        && answer.content_type.as_deref() == Some("application/problem+json")
        && answer.retry_after.is_some()
}

/// Requests with the same key, spread over four replicas at once: the handler runs once
/// per key in total; every other answer is a 409 or the replay of that one response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_replicas_runs_the_handler_once_per_key() {
    let prefix = support::unique_prefix("storm");
    let url = shared_url();
    let replicas = Replicas::start(4, || store(&url, &prefix), |i| i).await;
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
        // Afterwards every replica replays it.
        for &addr in replicas.addrs() {
            let answer = client.post(addr, &Order::new(key)).await.unwrap();
            assert!(answer.status == 201 && answer.replayed, "{answer:?}");
            assert_eq!(answer.body, *original);
        }
    }
    assert_eq!(replicas.runs().get(), keys.len());
}

/// A replica dies in the middle of a request, so its lease renewals stop. Another replica
/// answers 409 while the lease lasts, and runs the request itself once it has lapsed,
/// never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replicas_request_is_taken_over_after_its_lease() {
    const LEASE: Duration = Duration::from_secs(3);
    let prefix = support::unique_prefix("takeover");
    let url = shared_url();
    let survivor = Replicas::start(
        1,
        || store(&url, &prefix),
        |i: Idempotency| i.with_lease(LEASE),
    )
    .await;
    // Both count into one tally.
    let runs = survivor.runs().clone();
    let (dying_url, dying_prefix) = (url.clone(), prefix.clone());
    let mut dying = KillableReplica::start(
        &runs,
        move || async move { store(&dying_url, &dying_prefix).await },
        |i| i.with_lease(LEASE),
    );
    let client = Client::new();
    let order = Order::new("order-1");

    // A request that would take a minute; it has begun once the handler ran.
    let slow = {
        let (client, order, addr) = (client.clone(), order.clone(), dying.addr());
        tokio::spawn(async move { client.post(addr, &order.sleeping(60_000)).await })
    };
    while runs.get() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The handler outlives its first lease: the owner's renewals keep the key.
    tokio::time::sleep(LEASE * 3 / 2).await;
    let answer = client.post(survivor.addrs()[0], &order).await.unwrap();
    assert!(
        is_conflict(&answer),
        "a live owner keeps the key: {answer:?}"
    );

    let killed = Instant::now();
    dying.kill();
    assert!(
        slow.await.unwrap().is_err(),
        "the dead replica's request gets no answer"
    );

    let mut conflicts = 0;
    let taken_over = loop {
        let answer = client.post(survivor.addrs()[0], &order).await.unwrap();
        if answer.status == 201 {
            break answer;
        }
        assert!(
            is_conflict(&answer),
            "until the lease lapses: 409, got {answer:?}"
        );
        conflicts += 1;
        assert!(
            killed.elapsed() < LEASE * 10,
            "the key was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = killed.elapsed();
    assert!(
        conflicts > 0,
        "a 409 must come first, while the lease lasts"
    );
    // The last renewal was at most a third of the lease (plus a round trip) before the
    // kill, so the lease ran at least two thirds of it past the kill.
    assert!(
        waited >= LEASE / 2,
        "taken over {waited:?} after the owner died, before its lease of {LEASE:?} lapsed"
    );
    assert!(!taken_over.replayed, "the survivor ran the request itself");
    assert_eq!(runs.get(), 2, "the dead replica's run and the survivor's");
    let replay = client.post(survivor.addrs()[0], &order).await.unwrap();
    assert!(
        replay.replayed && replay.body == taken_over.body,
        "{replay:?}"
    );
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
        |i: Idempotency| i.with_store_timeout(Duration::from_millis(300)),
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
