//! The tiered store: the durable store decides, the fast store serves replays, and losing
//! the fast store loses nothing.

mod support;

use std::time::Duration;

use idempotent_runtime::store::TieredStore;
use idempotent_runtime::testkit::{run_all, sample_response, unique_prefix};
use idempotent_runtime::{Claim, FencingToken, Fingerprint, MemoryStore, Record, Store};
use support::broken::Broken;
use support::counting::{Calls, Counting, Op};
use support::flaky::{Fault, Flaky, replacing_fingerprint, replacing_response};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiered_memory_passes_the_kit() {
    run_all(&TieredStore::new(MemoryStore::new(), MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_or_hanging_fast_store_loses_nothing() {
    for fast in [Broken::Failing, Broken::Hanging] {
        let store =
            TieredStore::new(MemoryStore::new(), fast).with_fast_timeout(Duration::from_millis(20));
        run_all(&store).await;
    }
}

const LONG: Duration = Duration::from_secs(60);

/// Claims a key nobody holds; its token.
async fn acquire(store: &impl Store, key: &str, fp: Fingerprint) -> FencingToken {
    match store.claim(key, fp, LONG).await.expect("claim") {
        Claim::Acquired(token) => token,
        other => panic!("a new key is acquired, got {other:?}"),
    }
}

/// Stores the sample response under the claim, which must still own the key.
async fn complete(store: &impl Store, key: &str, token: FencingToken, ttl: Duration) {
    assert!(
        store
            .complete(key, token, &sample_response(), ttl)
            .await
            .expect("complete"),
        "the claim still owns the key"
    );
}

#[tokio::test]
async fn replays_are_served_from_the_fast_store() {
    let durable_calls = Calls::default();
    let store = TieredStore::new(
        Counting::new(MemoryStore::new(), &durable_calls),
        MemoryStore::new(),
    );
    let key = format!("{}:replay", unique_prefix());
    let fp = Fingerprint::of_bytes(b"order");
    let token = acquire(&store, &key, fp).await;
    complete(&store, &key, token, LONG).await;
    assert!(
        matches!(
            store.fast().lookup(&key).await,
            Ok(Some(Record::Completed { .. }))
        ),
        "a completion is copied to the fast store"
    );
    let claims = durable_calls.of(Op::Claim);
    for _ in 0..3 {
        match store.claim(&key, fp, LONG).await.expect("claim") {
            Claim::Existing(Record::Completed {
                response,
                fingerprint,
            }) => {
                assert_eq!(response, sample_response());
                assert_eq!(fingerprint, fp);
            }
            other => panic!("expected the stored response, got {other:?}"),
        }
    }
    assert_eq!(
        durable_calls.of(Op::Claim),
        claims,
        "replays did not reach the durable store"
    );
}

#[tokio::test]
async fn a_miss_fills_the_fast_store_from_the_durable_one() {
    let durable = MemoryStore::new();
    let fast = MemoryStore::new();
    let key = format!("{}:fill", unique_prefix());
    let fp = Fingerprint::of_bytes(b"order");
    // Completed by a replica whose fast store was down.
    let token = acquire(&durable, &key, fp).await;
    complete(&durable, &key, token, LONG).await;
    assert_eq!(fast.lookup(&key).await.expect("lookup"), None);

    let store = TieredStore::new(durable, fast);
    assert!(matches!(
        store.claim(&key, fp, LONG).await,
        Ok(Claim::Existing(Record::Completed { .. }))
    ));
    match store.fast().lookup(&key).await.expect("lookup") {
        Some(Record::Completed {
            response,
            fingerprint,
        }) => {
            assert_eq!(response, sample_response());
            assert_eq!(
                fingerprint, fp,
                "the copy keeps the fingerprint, so 422 still works"
            );
        }
        other => panic!("the miss must fill the fast store, got {other:?}"),
    }
}

/// A completion is copied to the fast store with its claim's fingerprint, for what is
/// left of its TTL: when the durable record expired (and another request's took its
/// place) before the completion's answer came back, nothing is copied, since the copy
/// would answer for a key the durable store has let go.
#[tokio::test]
async fn a_copy_never_outlives_the_durable_record() {
    let store = TieredStore::new(Flaky::new(Fault::ReplacedComplete), MemoryStore::new());
    let key = format!("{}:replaced", unique_prefix());
    let token = acquire(&store, &key, Fingerprint::of_bytes(b"order")).await;
    let ttl = Duration::from_millis(50);
    complete(&store, &key, token, ttl).await;
    assert_eq!(store.fast().lookup(&key).await.expect("lookup"), None);
    // The other request gets its own response, not a 422 from a stale copy.
    match store.claim(&key, replacing_fingerprint(), LONG).await {
        Ok(Claim::Existing(Record::Completed { response, .. })) => {
            assert_eq!(response, replacing_response());
        }
        other => panic!("expected the other request's response, got {other:?}"),
    }
}

/// A capped fast store that is full keeps copying: an evicting one drops an older copy,
/// so the newest key is still replayed without the durable store.
#[tokio::test]
async fn a_full_evicting_fast_store_keeps_the_newest_copy() {
    let durable_calls = Calls::default();
    let store = TieredStore::new(
        Counting::new(MemoryStore::new(), &durable_calls),
        MemoryStore::new().with_max_entries(1).evicting(),
    );
    let prefix = unique_prefix();
    let keys: Vec<String> = (0..5).map(|i| format!("{prefix}:evict:{i}")).collect();
    let fp = Fingerprint::of_bytes(b"order");
    for key in &keys {
        let token = acquire(&store, key, fp).await;
        complete(&store, key, token, LONG).await;
    }
    assert_eq!(store.fast().len(), 1);
    let claims = durable_calls.of(Op::Claim);
    let newest = &keys[keys.len() - 1];
    assert!(matches!(
        store.claim(newest, fp, LONG).await.expect("claim"),
        Claim::Existing(Record::Completed { .. })
    ));
    assert_eq!(
        durable_calls.of(Op::Claim),
        claims,
        "the newest key was replayed from the fast store"
    );
}

/// A first execution costs the durable store a claim and a completion, nothing more: the
/// copy's fingerprint comes from the claim, not from reading the record back.
#[tokio::test]
async fn a_first_execution_reaches_the_durable_store_twice() {
    let durable_calls = Calls::default();
    let store = TieredStore::new(
        Counting::new(MemoryStore::new(), &durable_calls),
        MemoryStore::new(),
    );
    let key = format!("{}:twice", unique_prefix());
    let fp = Fingerprint::of_bytes(b"order");
    let token = acquire(&store, &key, fp).await;
    complete(&store, &key, token, LONG).await;
    assert_eq!(
        (durable_calls.of(Op::Claim), durable_calls.of(Op::Complete)),
        (1, 1)
    );
    assert_eq!(durable_calls.total(), 2, "no other durable call");
    assert_eq!(
        store.fast().lookup(&key).await.expect("lookup"),
        Some(Record::Completed {
            fingerprint: fp,
            response: sample_response()
        }),
        "the copy carries the claim's fingerprint"
    );
}

/// A completion that failed leaves the claim in place, and the protocol tries it again:
/// the retry, once accepted, is still copied.
#[tokio::test]
async fn a_completion_accepted_on_its_second_try_is_copied() {
    let store = TieredStore::new(Flaky::new(Fault::FailedCompletes(1)), MemoryStore::new());
    let key = format!("{}:second-try", unique_prefix());
    let fp = Fingerprint::of_bytes(b"order");
    let token = acquire(&store, &key, fp).await;
    assert!(
        store
            .complete(&key, token, &sample_response(), LONG)
            .await
            .is_err()
    );
    assert_eq!(store.fast().lookup(&key).await.expect("lookup"), None);
    complete(&store, &key, token, LONG).await;
    assert!(matches!(
        store.fast().lookup(&key).await,
        Ok(Some(Record::Completed { fingerprint, .. })) if fingerprint == fp
    ));
}

/// A completion's copy is kept for `fill_ttl` at most, however long the endpoint's TTL:
/// the fast store holds only the recent keys, and the durable store answers the rest.
#[tokio::test]
async fn a_completions_copy_is_kept_for_the_fill_ttl_at_most() {
    let fill_ttl = Duration::from_secs(1);
    let store = TieredStore::new(MemoryStore::new(), MemoryStore::new()).with_fill_ttl(fill_ttl);
    let key = format!("{}:fill-ttl", unique_prefix());
    let fp = Fingerprint::of_bytes(b"order");
    let token = acquire(&store, &key, fp).await;
    let ttl = Duration::from_secs(3600);
    complete(&store, &key, token, ttl).await;
    assert!(matches!(
        store.fast().lookup(&key).await,
        Ok(Some(Record::Completed { .. }))
    ));
    tokio::time::sleep(fill_ttl + Duration::from_millis(100)).await;
    assert_eq!(store.fast().lookup(&key).await.expect("lookup"), None);
    match store.claim(&key, fp, LONG).await.expect("claim") {
        Claim::Existing(Record::Completed { response, .. }) => {
            assert_eq!(
                response,
                sample_response(),
                "the durable store still answers"
            );
        }
        other => panic!("expected the stored response, got {other:?}"),
    }
}

/// Without copies on completion, a first execution writes nothing to the fast store;
/// the first retry asks the durable store and fills the fast one, which answers the
/// retries after it. The kit holds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_copies_on_completion_the_first_miss_fills() {
    run_all(
        &TieredStore::new(MemoryStore::new(), MemoryStore::new()).with_copy_on_completion(false),
    )
    .await;

    let (durable_calls, fast_calls) = (Calls::default(), Calls::default());
    let store = TieredStore::new(
        Counting::new(MemoryStore::new(), &durable_calls),
        Counting::new(MemoryStore::new(), &fast_calls),
    )
    .with_copy_on_completion(false);
    let key = format!("{}:no-copy", unique_prefix());
    let fp = Fingerprint::of_bytes(b"order");
    let token = acquire(&store, &key, fp).await;
    complete(&store, &key, token, LONG).await;
    assert_eq!(
        (fast_calls.total(), fast_calls.of(Op::Lookup)),
        (1, 1),
        "the first execution only looked the key up in the fast store"
    );
    for retry in 0..3 {
        match store.claim(&key, fp, LONG).await.expect("claim") {
            Claim::Existing(Record::Completed { response, .. }) => {
                assert_eq!(response, sample_response());
            }
            other => panic!("expected the stored response, got {other:?}"),
        }
        assert_eq!(durable_calls.of(Op::Claim), 2, "after retry {retry}");
    }
    assert!(matches!(
        store.fast().lookup(&key).await,
        Ok(Some(Record::Completed { fingerprint, .. })) if fingerprint == fp
    ));
}

/// Up to [`support::ALLOCATOR_CACHE`]. A Postgres claim's future alone is 2.8 KB, so a
/// tiered store boxes the durable store's steps on their own. Replays from memory in
/// front of Postgres then served 3 to 5 % more requests a second under load, in
/// back-to-back runs.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_futures_of_a_tiered_claim_and_completion_fit_the_allocators_cache() {
    // A pool that connects on first use: the futures are measured, never run.
    let pool = idempotent_runtime::sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:5432/test")
        .unwrap();
    let store = TieredStore::new(
        idempotent_runtime::PostgresStore::new(pool),
        MemoryStore::new(),
    );
    let (fingerprint, token) = (Fingerprint::of_bytes(b"{}"), FencingToken::random());
    let claim = size_of_val(&store.claim("k", fingerprint, LONG));
    assert!(claim <= support::ALLOCATOR_CACHE, "claim: {claim} bytes");
    let response = sample_response();
    let completion = size_of_val(&store.complete("k", token, &response, LONG));
    assert!(
        completion <= support::ALLOCATOR_CACHE,
        "completion: {completion} bytes"
    );
}
