//! The tiered store over real servers, Postgres deciding and Redis serving replays: the
//! conformance kit, and an app whose Redis dies and comes back.
#![cfg(all(feature = "redis", feature = "postgres"))]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use idempotent_runtime::store::TieredStore;
use idempotent_runtime::{PostgresStore, RedisStore, testkit};
use serde_json::json;
use support::counting::{Calls, Counting};
use support::postgres::{fresh_store, store_in};
use support::redis_commands::{command_calls, ran, raw_connection};
use support::redis_server::{RedisServer, shared_url};
use support::replicas::{Answer, Client, Order, Replicas, is_conflict};

async fn redis(url: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} (scripts/services.sh starts it): {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiered_postgres_and_redis_pass_the_kit() {
    let (durable, _schema) = fresh_store().await;
    let fast = redis(&shared_url())
        .await
        .with_prefix(support::unique_prefix("tiered-kit"));
    testkit::run_all(&TieredStore::new(durable, fast)).await;
}

/// One replica's store: Postgres through a pool of its own, its calls counted into
/// `durable`, and a Redis connection of its own.
async fn tiered(
    schema: &str,
    durable: &Calls,
    redis_url: &str,
) -> TieredStore<Counting<PostgresStore>, RedisStore> {
    TieredStore::new(
        Counting::new(store_in(schema).await, durable),
        redis(redis_url).await,
    )
    // The test counts which store answered: a slow moment of the machine must not send
    // a lookup to Postgres by timing out the fast store. Well below the store timeout
    // still, which bounds a claim's lookup, durable claim and fill together while Redis
    // is down.
    .with_fast_timeout(Duration::from_millis(500))
}

async fn send(client: &Client, addr: SocketAddr, order: &Order) -> Answer {
    client
        .post(addr, order)
        .await
        .unwrap_or_else(|e| panic!("the replica at {addr} did not answer: {e}"))
}

fn assert_replay_of(answer: &Answer, original: &Answer) {
    assert!(
        answer.status == 201 && answer.replayed && answer.body == original.body,
        "expected the replay of {original:?}, got {answer:?}"
    );
}

/// Two replicas over one Postgres and one Redis of their own. While Redis is up, replays
/// are served from it without a call to Postgres. Once it is killed, the replicas answer
/// exactly as before from Postgres alone: first executions, replays, mismatches and
/// conflicts, never a 503. When it comes back, empty, replays are served from it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_come_from_redis_and_postgres_carries_on_without_it() {
    let mut server = RedisServer::start();
    let url = server.url();
    let (_, schema) = fresh_store().await;
    let durable = Calls::default();
    let replicas = Replicas::start(2, || tiered(schema.name(), &durable, &url), |i| i).await;
    let (a, b) = (replicas.addrs()[0], replicas.addrs()[1]);
    let client = Client::new();
    let mut stats = raw_connection(&url).await;

    let first = send(&client, a, &Order::new("first")).await;
    assert!(first.status == 201 && !first.replayed, "{first:?}");

    // Replays, on both replicas: one Redis round trip each, nothing from Postgres.
    let (durable_before, redis_before) = (durable.total(), command_calls(&mut stats).await);
    for addr in [a, b, a] {
        assert_replay_of(&send(&client, addr, &Order::new("first")).await, &first);
    }
    assert_eq!(
        durable.total(),
        durable_before,
        "a replay must not reach Postgres while Redis has the record"
    );
    let redis_ran = ran(&redis_before, &command_calls(&mut stats).await);
    assert_eq!(
        redis_ran,
        [("get".to_owned(), 3)].into(),
        "each replay is one Redis round trip, a GET: {redis_ran:?}"
    );
    drop(stats);

    server.kill();
    // What was completed before is still replayed, now from Postgres.
    for addr in [a, b] {
        let durable_before = durable.total();
        assert_replay_of(&send(&client, addr, &Order::new("first")).await, &first);
        assert!(
            durable.total() > durable_before,
            "without Redis the replay comes from Postgres"
        );
    }
    // A new key runs once, then replays on either replica.
    let second = send(&client, b, &Order::new("second")).await;
    assert!(second.status == 201 && !second.replayed, "{second:?}");
    assert_replay_of(&send(&client, a, &Order::new("second")).await, &second);
    assert_replay_of(&send(&client, b, &Order::new("second")).await, &second);
    // Another body under that key is still the client's mistake.
    let mut other = Order::new("second");
    other.body = json!({"item": "gadget", "qty": 2});
    let mismatch = send(&client, a, &other).await;
    assert_eq!(mismatch.status, 422, "{mismatch:?}");
    // A request in flight on one replica is still a conflict on the other. Its handler
    // outlasts, with room to spare, the other replica's claim, which first waits out its
    // fast-store timeout against the dead Redis.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, a, &Order::new("third").sleeping(5_000)).await })
    };
    let started = async {
        while replicas.runs().get() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the slow request's handler ran");
    let conflict = send(&client, b, &Order::new("third")).await;
    assert!(is_conflict(&conflict), "{conflict:?}");
    let third = slow.await.expect("the slow request's task");
    assert!(third.status == 201 && !third.replayed, "{third:?}");
    assert_eq!(replicas.runs().get(), 3, "each key ran once, Redis or not");

    // Redis returns, empty: the first replay fills it from Postgres, and soon replays are
    // served from it again, by the same replicas, not restarted.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let durable_before = durable.total();
        assert_replay_of(&send(&client, b, &Order::new("second")).await, &second);
        if durable.total() == durable_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replays never came from Redis again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replicas.runs().get(), 3);
}
