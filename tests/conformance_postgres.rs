//! The Postgres store against the real server: the conformance kit, migrations, custom
//! names, cleanup, and errors instead of panics.
//!
//! Each test works in a schema of its own, dropped at the end, so the tests run in
//! parallel and twice in a row. DATABASE_URL defaults to
//! `postgres://postgres@127.0.0.1:5432/test`.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use idempotent_runtime::store::postgres::STOP_GRACE;
use idempotent_runtime::testkit::{concurrent_claims_have_one_winner, run_all, sample_response};
use idempotent_runtime::{Claim, Fingerprint, PostgresStore, Record, Store};
use support::postgres::{TestSchema, connect_options, fresh_store, lock_rows, pool, row_count};

const LONG: Duration = Duration::from_secs(3600);
/// Expired as soon as it is written; the tests still wait past it.
const INSTANT: Duration = Duration::from_millis(1);

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_bytes(body.as_bytes())
}

async fn acquire(
    store: &PostgresStore,
    key: &str,
    lease: Duration,
) -> idempotent_runtime::FencingToken {
    match store.claim(key, fp("a"), lease).await {
        Ok(Claim::Acquired(token)) => token,
        other => panic!("claim of `{key}` must be acquired, got {other:?}"),
    }
}

/// Claims `key` and completes it with the sample response for `LONG`.
async fn acquire_and_complete(store: &PostgresStore, key: &str) {
    let token = acquire(store, key, LONG).await;
    assert!(
        store
            .complete(key, token, &sample_response(), LONG)
            .await
            .unwrap(),
        "completing `{key}` under its own claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_kit() {
    let (store, _schema) = fresh_store().await;
    run_all(&store).await;
}

/// Many claimants of one key at once commit between each other's snapshot and insert: the
/// store must still answer each of them with what is there now (acquired, or the winner's
/// live claim), never fail, come back empty or show the lapsed claim it replaced. Several
/// rounds, on new keys and on keys whose lease lapsed, so that the race is met every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_settle_on_new_and_lapsed_keys() {
    let (store, _schema) = fresh_store().await;
    claims_settle(&store).await;
}

/// A store over `schema` whose pool's transactions default to `REPEATABLE READ`.
async fn repeatable_read_store(schema: &TestSchema) -> PostgresStore {
    let options = connect_options().options([("default_transaction_isolation", "repeatable read")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with(options)
        .await
        .expect("a pool");
    PostgresStore::new(pool)
        .with_schema(schema.name())
        .expect("a valid schema name")
}

/// The same, and the whole kit, over a pool whose transactions default to `REPEATABLE
/// READ`: a claim that meets a concurrent claimant then fails with a serialization
/// error, which the store answers by trying again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_at_repeatable_read_settles_claims_too() {
    let (_migrated, schema) = fresh_store().await;
    let store = repeatable_read_store(&schema).await;
    let isolation: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(store.pool())
        .await
        .expect("isolation");
    assert_eq!(isolation, "repeatable read");
    claims_settle(&store).await;
    run_all(&store).await;
}

/// A claim whose lease lapsed while nobody claimed the key (its owner was cut off from
/// the database, say) is still its owner's: it renews, and its response is stored and
/// replayed, rather than lost to a second run. A takeover still fences it out.
#[tokio::test]
async fn a_lapsed_claim_nobody_took_over_can_still_be_completed() {
    let (store, _schema) = fresh_store().await;
    let token = acquire(&store, "cut-off", INSTANT).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store.renew("cut-off", token, LONG).await.unwrap(),
        "renewed"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        matches!(
            store.lookup("cut-off").await.unwrap(),
            Some(Record::InFlight { .. })
        ),
        "the renewed lease is live again"
    );

    let token = acquire(&store, "slow", INSTANT).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store
            .complete("slow", token, &sample_response(), LONG)
            .await
            .unwrap(),
        "completed after the lease"
    );
    match store.claim("slow", fp("a"), LONG).await.unwrap() {
        Claim::Existing(Record::Completed { response, .. }) => {
            assert_eq!(response, sample_response());
        }
        other => panic!("expected the replay, got {other:?}"),
    }

    // Once another claim took the key over, the lapsed owner can do nothing.
    let stale = acquire(&store, "taken", INSTANT).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    acquire(&store, "taken", LONG).await;
    assert!(!store.renew("taken", stale, LONG).await.unwrap());
    assert!(
        !store
            .complete("taken", stale, &sample_response(), LONG)
            .await
            .unwrap()
    );
    assert!(!store.release("taken", stale).await.unwrap());
}

/// Over a pool at `REPEATABLE READ`, a purge that meets claims taking over the expired
/// rows it chose fails with a serialization error unless it tries again: it must neither
/// fail nor delete a row that a claim took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_at_repeatable_read_races_takeovers_without_failing() {
    let (_migrated, schema) = fresh_store().await;
    let store = repeatable_read_store(&schema).await;
    for round in 0..10 {
        let keys: Vec<String> = (0..200).map(|i| format!("{round}-{i}")).collect();
        for key in &keys {
            acquire(&store, key, INSTANT).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut takeovers = tokio::task::JoinSet::new();
        for chunk in keys.chunks(10) {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            takeovers.spawn(async move {
                for key in chunk {
                    acquire(&store, &key, LONG).await;
                }
            });
        }
        let mut purges = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = store.clone();
            purges.spawn(async move { store.purge_expired(5).await });
        }
        while let Some(purged) = purges.join_next().await {
            purged
                .unwrap()
                .expect("a purge racing takeovers must not fail");
        }
        while let Some(taken) = takeovers.join_next().await {
            taken.unwrap();
        }
        for key in &keys {
            assert!(
                matches!(
                    store.lookup(key).await.unwrap(),
                    Some(Record::InFlight { .. })
                ),
                "the takeover of `{key}` must stay"
            );
        }
    }
}

async fn claims_settle(store: &PostgresStore) {
    for round in 0..10 {
        concurrent_claims_have_one_winner(store, &format!("new-{round}"), 50).await;

        let lapsed = format!("lapsed-{round}");
        assert!(matches!(
            store.claim(&lapsed, fp("old"), INSTANT).await,
            Ok(Claim::Acquired(_))
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let start = Arc::new(tokio::sync::Barrier::new(50));
        let mut claimants = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (store, key, start) = (store.clone(), lapsed.clone(), Arc::clone(&start));
            claimants.spawn(async move {
                start.wait().await;
                store.claim(&key, fp("new"), LONG).await
            });
        }
        let mut winners = 0;
        while let Some(joined) = claimants.join_next().await {
            match joined.unwrap() {
                Ok(Claim::Acquired(_)) => winners += 1,
                Ok(Claim::Existing(Record::InFlight {
                    fingerprint,
                    lease_remaining,
                })) => {
                    assert_eq!(fingerprint, fp("new"), "a loser must see the new claim");
                    assert!(
                        lease_remaining > Duration::from_secs(60),
                        "{lease_remaining:?}"
                    );
                }
                other => panic!("a claim of a lapsed key returned {other:?}"),
            }
        }
        assert_eq!(winners, 1, "exactly one claimant takes a lapsed key over");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_runs_twice_and_from_many_replicas_at_once() {
    let schema = TestSchema::new();
    let store = PostgresStore::new(pool().await)
        .with_schema(schema.name())
        .unwrap();
    // Replicas starting together, on a database where neither schema nor table exists.
    let mut replicas = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = PostgresStore::new(pool().await)
            .with_schema(schema.name())
            .unwrap();
        replicas.spawn(async move { store.migrate().await });
    }
    while let Some(joined) = replicas.join_next().await {
        joined.unwrap().expect("a concurrent migrate must succeed");
    }
    store.migrate().await.expect("migrate again");
    store.migrate().await.expect("and again");
    acquire_and_complete(&store, "k").await;
    assert!(matches!(
        store.lookup("k").await.unwrap(),
        Some(Record::Completed { .. })
    ));
}

#[tokio::test]
async fn custom_schema_and_table_hold_the_records() {
    let schema = TestSchema::new();
    let pool = pool().await;
    let orders = PostgresStore::new(pool.clone())
        .with_schema(schema.name())
        .unwrap()
        .with_table("Order_Keys")
        .unwrap();
    let payments = orders.clone().with_table("payment_keys").unwrap();
    assert_eq!(
        (orders.schema(), orders.table()),
        (schema.name(), "Order_Keys")
    );
    orders.migrate().await.unwrap();
    payments.migrate().await.unwrap();

    // The same key in two tables: two independent claims.
    acquire(&orders, "k", LONG).await;
    acquire(&payments, "k", LONG).await;
    assert_eq!(row_count(&orders).await, 1);
    assert_eq!(row_count(&payments).await, 1);
    // The name is used as written (quoted), not folded to lower case.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(schema.name())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["Order_Keys", "payment_keys"]);

    for bad in ["orders; DROP TABLE users", "a\"b", "", "1st"] {
        assert!(
            orders.clone().with_table(bad).is_err(),
            "`{bad}` must be rejected"
        );
        assert!(
            orders.clone().with_schema(bad).is_err(),
            "`{bad}` must be rejected"
        );
    }
}

/// Fills the store with `expired` expired rows (half lapsed leases, half lapsed TTLs) and
/// `live` live ones (half in flight, half completed); returns the live keys.
async fn fill(store: &PostgresStore, expired: usize, live: usize) -> Vec<String> {
    for i in 0..expired {
        let key = format!("expired-{i}");
        if i % 2 == 0 {
            acquire(store, &key, INSTANT).await;
        } else {
            let token = acquire(store, &key, LONG).await;
            assert!(
                store
                    .complete(&key, token, &sample_response(), INSTANT)
                    .await
                    .unwrap()
            );
        }
    }
    let mut keys = Vec::new();
    for i in 0..live {
        let key = format!("live-{i}");
        if i % 2 == 0 {
            acquire_and_complete(store, &key).await;
        } else {
            acquire(store, &key, LONG).await;
        }
        keys.push(key);
    }
    // Past every INSTANT deadline.
    tokio::time::sleep(Duration::from_millis(50)).await;
    keys
}

async fn assert_live(store: &PostgresStore, keys: &[String]) {
    for key in keys {
        assert!(
            store.lookup(key).await.unwrap().is_some(),
            "live record `{key}` must stay"
        );
    }
}

#[tokio::test]
async fn purge_removes_expired_rows_in_batches_and_counts_them() {
    let (store, _schema) = fresh_store().await;
    let live = fill(&store, 37, 10).await;
    assert_eq!(row_count(&store).await, 47);

    // Batches of 10: four statements, one count.
    assert_eq!(store.purge_expired(10).await.unwrap(), 37);
    assert_eq!(row_count(&store).await, 10);
    assert_live(&store, &live).await;
    assert_eq!(
        store.purge_expired(10).await.unwrap(),
        0,
        "nothing left to purge"
    );
    // A batch size of 0 still makes progress.
    fill(&store, 3, 0).await;
    assert_eq!(store.purge_expired(0).await.unwrap(), 3);
}

#[tokio::test]
async fn purge_skips_rows_another_session_holds_instead_of_waiting() {
    let (store, _schema) = fresh_store().await;
    fill(&store, 5, 0).await;
    // Another session holds one expired row locked, as a claim taking it over would.
    let other = lock_rows(&store, &["expired-0"]).await;

    // If the purge waited for the lock, this would never finish while `other` is open.
    let purged = tokio::time::timeout(Duration::from_secs(30), store.purge_expired(2)).await;
    // Released before any assertion, so that a failure is reported instead of leaving the
    // schema's cleanup waiting for the lock.
    other.commit().await.unwrap();
    assert_eq!(
        purged
            .expect("purge must not wait for a locked row")
            .unwrap(),
        4
    );
    assert_eq!(store.purge_expired(2).await.unwrap(), 1);
    assert_eq!(row_count(&store).await, 0);
}

/// Each row's key and version (the transaction that last wrote it), in key order.
async fn row_versions(store: &PostgresStore) -> Vec<(String, String)> {
    let sql = format!(
        r#"SELECT key, xmin::text FROM "{}"."{}" ORDER BY key"#,
        store.schema(),
        store.table()
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// A claim that finds a live row (a replay, a request in flight, a key reused with
/// another body) only reads: it waits for no row lock and writes nothing, so retries of
/// one key do not queue behind each other or behind a transaction holding the row.
#[tokio::test]
async fn a_claim_that_finds_a_live_row_only_reads() {
    let (store, _schema) = fresh_store().await;
    acquire_and_complete(&store, "done").await;
    acquire(&store, "running", LONG).await;
    let versions = row_versions(&store).await;

    // Another session holds both rows locked.
    let other = lock_rows(&store, &["done", "running"]).await;

    // If a claim locked the row it finds, these would never finish while `other` is open.
    let claims = async {
        (
            store.claim("done", fp("a"), LONG).await,
            store.claim("done", fp("b"), LONG).await,
            store.claim("running", fp("a"), LONG).await,
        )
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), claims).await;
    // Released before any assertion, so that a failure is reported instead of leaving the
    // schema's cleanup waiting for the lock.
    other.commit().await.unwrap();
    let (replay, reused, in_flight) =
        outcome.expect("a claim that finds a live row must not wait for its lock");
    assert!(
        matches!(replay, Ok(Claim::Existing(Record::Completed { ref response, .. })) if *response == sample_response()),
        "{replay:?}"
    );
    assert!(
        matches!(reused, Ok(Claim::Existing(Record::Completed { fingerprint, .. })) if fingerprint == fp("a")),
        "{reused:?}"
    );
    assert!(
        matches!(in_flight, Ok(Claim::Existing(Record::InFlight { .. }))),
        "{in_flight:?}"
    );
    assert_eq!(
        row_versions(&store).await,
        versions,
        "a claim that acquires nothing writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_cleanup_removes_expired_rows_until_stopped() {
    let (store, _schema) = fresh_store().await;
    let live = fill(&store, 12, 4).await;

    let cleanup = store.spawn_cleanup(Duration::from_millis(20), 5).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while row_count(&store).await > 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background cleanup removed nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cleanup.stop().await, 12, "the task reports what it removed");
    assert_live(&store, &live).await;

    // Dropping the handle stops the task too: rows that expire afterwards stay. (A
    // purge the task had begun gets its grace first.)
    let cleanup = store.spawn_cleanup(Duration::from_millis(10), 5).unwrap();
    drop(cleanup);
    tokio::time::sleep(STOP_GRACE + Duration::from_millis(100)).await;
    fill(&store, 3, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(row_count(&store).await, 7, "a dropped cleanup must not run");
}

/// Two expired rows, and a cleanup task whose purge waits on a table lock held by the
/// returned transaction of another session: roll it back to let the purge through.
async fn cleanup_stuck_on_a_table_lock(
    store: &PostgresStore,
) -> (
    idempotent_runtime::store::postgres::CleanupTask,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    fill(store, 2, 0).await;
    let mut lock = pool().await.begin().await.expect("begin");
    let statement = format!(
        r#"LOCK TABLE "{}"."{}" IN ACCESS EXCLUSIVE MODE"#,
        store.schema(),
        store.table()
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut *lock)
        .await
        .expect("lock");
    let cleanup = store.spawn_cleanup(Duration::from_millis(10), 5).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (cleanup, lock)
}

/// A shutdown must not wait on a database that stopped answering: here the cleanup's
/// statement waits on a table lock held by another session.
#[tokio::test]
async fn stopping_the_cleanup_does_not_wait_for_a_stuck_statement() {
    let (store, _schema) = fresh_store().await;
    let (cleanup, lock) = cleanup_stuck_on_a_table_lock(&store).await;
    let stopped = tokio::time::timeout(Duration::from_secs(5), cleanup.stop()).await;
    lock.rollback().await.expect("rollback");
    assert_eq!(
        stopped.expect("stop() waited for the stuck statement"),
        0,
        "nothing was deleted before the stop"
    );
}

/// A statement under way when the cleanup is stopped, which then finishes within the
/// grace, is counted: `stop()` reports what was removed.
#[tokio::test]
async fn stopping_the_cleanup_counts_the_statement_under_way() {
    let (store, _schema) = fresh_store().await;
    let (cleanup, lock) = cleanup_stuck_on_a_table_lock(&store).await;
    let stopping = tokio::spawn(cleanup.stop());
    // Long enough for `stop` to begin, short beside its grace.
    tokio::time::sleep(Duration::from_millis(10)).await;
    lock.rollback().await.expect("rollback");
    let removed = stopping.await.expect("stop()");
    assert_eq!(removed, 2, "the statement finished within the grace");
    assert_eq!(row_count(&store).await, 0);
}

#[tokio::test]
async fn corrupt_rows_are_store_errors_not_panics() {
    let (store, _schema) = fresh_store().await;
    let insert = format!(
        r#"INSERT INTO "{}"."{}" (key, token, fingerprint, state, expires_at, response)
           VALUES ($1, 1, $2, $3, clock_timestamp() + interval '1 hour', $4)"#,
        store.schema(),
        store.table()
    );
    let good_fp = fp("a").as_bytes().to_vec();
    // key, fingerprint, state, response
    let rows = [
        (
            "short-fingerprint",
            vec![1, 2, 3],
            "in_flight",
            None::<Vec<u8>>,
        ),
        (
            "garbage-response",
            good_fp.clone(),
            "completed",
            Some(b"not a response".to_vec()),
        ),
        ("missing-response", good_fp, "completed", None),
    ];
    for (key, fingerprint, state, response) in rows {
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(key)
            .bind(fingerprint)
            .bind(state)
            .bind(response)
            .execute(store.pool())
            .await
            .unwrap();
        let err = store
            .lookup(key)
            .await
            .expect_err("lookup of a corrupt row");
        assert!(err.to_string().contains("corrupt"), "{err}");
        let err = store
            .claim(key, fp("a"), LONG)
            .await
            .expect_err("claim of a corrupt row");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

#[tokio::test]
async fn a_closed_pool_is_a_store_error() {
    let (store, _schema) = fresh_store().await;
    store.pool().close().await;
    assert!(store.claim("k", fp("a"), LONG).await.is_err());
    assert!(store.lookup("k").await.is_err());
    assert!(store.purge_expired(10).await.is_err());
}
