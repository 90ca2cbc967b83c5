//! The conformance kit: the checks every [`Store`] must pass, runnable against any store,
//! yours included, with one call.
//!
//! ```
//! use idempotent_runtime::MemoryStore;
//!
//! # #[tokio::main]
//! # async fn main() {
//! idempotent_runtime::testkit::run_all(&MemoryStore::new()).await;
//! # }
//! ```
//!
//! Each check uses keys under a random prefix, so the kit can run in parallel with other
//! tests against a shared server, and twice in a row. Every record but one expires
//! within a minute; [`longest_ttl_is_kept`]'s is kept for as long as the store keeps
//! anything (100 years, in effect for ever), so give the store a prefix of its own for
//! the run and remove its keys afterwards.
//!
//! The checks that involve expiry use real time (stores keep time on their server):
//! leases and TTLs of a few hundred milliseconds to two seconds with generous margins,
//! about eight seconds for the whole kit.
//!
//! A failed check panics with a message naming the check and the rule it broke.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::{Claim, FencingToken, Fingerprint, Record, Store, StoredResponse};

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);
/// Comfortably past [`SHORT`], even on a loaded machine.
const PAST_SHORT: Duration = Duration::from_millis(800);
/// For the checks that need something to still be there: long enough that a stall of a
/// few hundred milliseconds (a loaded machine, a slow CI runner) does not fail them.
const MEDIUM: Duration = Duration::from_millis(800);
/// Comfortably past [`MEDIUM`].
const PAST_MEDIUM: Duration = Duration::from_millis(1600);

/// Runs every check against `store`.
pub async fn run_all<S: Store + Clone>(store: &S) {
    let prefix = unique_prefix();
    let key = |name: &str| format!("{prefix}:{name}");
    claim_is_exclusive(store, &key("exclusive")).await;
    complete_then_replay(store, &key("replay")).await;
    fingerprint_is_kept(store, &key("fingerprint")).await;
    release_frees_the_key(store, &key("release")).await;
    wrong_token_changes_nothing(store, &key("wrong-token")).await;
    completed_is_final(store, &key("final")).await;
    lookup_reads_without_claiming(store, &key("lookup")).await;
    keys_are_independent(store, &key("a"), &key("b")).await;
    renewal_keeps_the_lease(store, &key("renew")).await;
    longest_lease_is_held(store, &key("longest")).await;
    longest_ttl_is_kept(store, &key("longest-ttl")).await;
    lapsed_lease_is_taken_over(store, &key("takeover")).await;
    completion_outlives_the_lease(store, &key("outlives")).await;
    stale_owner_is_fenced(store, &key("fenced")).await;
    ttl_expires_the_record(store, &key("ttl")).await;
    concurrent_claims_have_one_winner(store, &key("race"), 100).await;
    concurrent_takeovers_have_one_winner(store, &key("takeover-race"), 100).await;
}

/// A prefix no earlier run used.
pub fn unique_prefix() -> String {
    format!("kit-{:016x}", FencingToken::random().0)
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_bytes(body.as_bytes())
}

/// A response with a repeated header, a non-UTF-8 value and a binary body.
pub fn sample_response() -> StoredResponse {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("location", HeaderValue::from_static("/orders/42"));
    headers.append("vary", HeaderValue::from_static("accept"));
    headers.append("vary", HeaderValue::from_static("origin"));
    if let Ok(binary) = HeaderValue::from_bytes(&[0xfe, 0x80, b'a']) {
        headers.insert("x-binary", binary);
    }
    let mut body = br#"{"order_id":42}"#.to_vec();
    body.extend([0u8, 0xff, 0x10]);
    StoredResponse::new(StatusCode::CREATED, headers, body.into())
}

async fn acquire<S: Store>(
    store: &S,
    key: &str,
    fingerprint: Fingerprint,
    lease: Duration,
) -> FencingToken {
    match store.claim(key, fingerprint, lease).await {
        Ok(Claim::Acquired(token)) => token,
        other => panic!("claim of a free key `{key}` must be acquired, got {other:?}"),
    }
}

async fn ok<T: std::fmt::Debug>(result: Result<T, crate::StoreError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what}: store error: {err}"),
    }
}

/// A second claim of a claimed key sees it in flight, with the lease left.
pub async fn claim_is_exclusive<S: Store>(store: &S, key: &str) {
    acquire(store, key, fp("a"), LONG).await;
    match ok(store.claim(key, fp("a"), LONG).await, "second claim").await {
        Claim::Existing(Record::InFlight {
            fingerprint,
            lease_remaining,
        }) => {
            assert_eq!(
                fingerprint,
                fp("a"),
                "in-flight record keeps the claimant's fingerprint"
            );
            assert!(
                lease_remaining > Duration::ZERO && lease_remaining <= LONG,
                "lease_remaining must be within the lease, got {lease_remaining:?}"
            );
        }
        other => panic!("second claim of an in-flight key must see it in flight, got {other:?}"),
    }
}

/// A completed key replays the stored response exactly.
pub async fn complete_then_replay<S: Store>(store: &S, key: &str) {
    let (fingerprint, stored) = complete_and_claim(store, key, LONG, "").await;
    assert_eq!(fingerprint, fp("a"));
    assert_eq!(
        stored,
        sample_response(),
        "the stored response must come back byte for byte"
    );
    assert_eq!(
        stored.headers().iter().filter(|(n, _)| n == "vary").count(),
        2,
        "repeated headers are kept"
    );
}

/// Claims `key`, completes it with [`sample_response`] under `ttl`, and claims it again:
/// the completed record's fingerprint and response. `under` qualifies the completion in
/// the messages of a failure.
async fn complete_and_claim<S: Store>(
    store: &S,
    key: &str,
    ttl: Duration,
    under: &str,
) -> (Fingerprint, StoredResponse) {
    let token = acquire(store, key, fp("a"), LONG).await;
    assert!(
        ok(
            store.complete(key, token, &sample_response(), ttl).await,
            "complete"
        )
        .await,
        "the owner's completion{under} must succeed"
    );
    match ok(
        store.claim(key, fp("a"), LONG).await,
        "claim after complete",
    )
    .await
    {
        Claim::Existing(Record::Completed {
            fingerprint,
            response,
        }) => (fingerprint, response),
        other => panic!("a claim of a key completed{under} must return the record, got {other:?}"),
    }
}

/// The record keeps the first request's fingerprint, so a different request is detected.
pub async fn fingerprint_is_kept<S: Store>(store: &S, key: &str) {
    let token = acquire(store, key, fp("first"), LONG).await;
    match ok(
        store.claim(key, fp("second"), LONG).await,
        "claim with another fingerprint",
    )
    .await
    {
        Claim::Existing(record) => assert_eq!(*record.fingerprint(), fp("first")),
        other => panic!("a claimed key must not be acquired again, got {other:?}"),
    }
    ok(
        store.complete(key, token, &sample_response(), LONG).await,
        "complete",
    )
    .await;
    match ok(
        store.claim(key, fp("second"), LONG).await,
        "claim with another fingerprint",
    )
    .await
    {
        Claim::Existing(Record::Completed { fingerprint, .. }) => {
            assert_eq!(fingerprint, fp("first"))
        }
        other => panic!("a completed key must return its record, got {other:?}"),
    }
}

/// A released key can be claimed again, with a new token.
pub async fn release_frees_the_key<S: Store>(store: &S, key: &str) {
    let first = acquire(store, key, fp("a"), LONG).await;
    assert!(
        ok(store.release(key, first).await, "release").await,
        "owner's release must succeed"
    );
    let second = acquire(store, key, fp("b"), LONG).await;
    assert_ne!(first, second, "a new claim must get a new fencing token");
    assert!(
        !ok(
            store.complete(key, first, &sample_response(), LONG).await,
            "stale complete"
        )
        .await,
        "the released token must not complete the new claim"
    );
}

/// Renew, complete and release with a token that does not own the key do nothing.
pub async fn wrong_token_changes_nothing<S: Store>(store: &S, key: &str) {
    let token = acquire(store, key, fp("a"), LONG).await;
    let wrong = FencingToken(token.0.wrapping_add(7919));
    assert!(
        !ok(store.renew(key, wrong, LONG).await, "renew").await,
        "renew with a wrong token must fail"
    );
    assert!(
        !ok(
            store.complete(key, wrong, &sample_response(), LONG).await,
            "complete"
        )
        .await,
        "complete with a wrong token must fail"
    );
    assert!(
        !ok(store.release(key, wrong).await, "release").await,
        "release with a wrong token must fail"
    );
    assert!(
        matches!(
            ok(store.lookup(key).await, "lookup").await,
            Some(Record::InFlight { .. })
        ),
        "the claim must be untouched"
    );
    // Nothing of this applies to a key nobody claimed.
    let absent = format!("{key}:absent");
    assert!(!ok(store.renew(&absent, token, LONG).await, "renew").await);
    assert!(
        !ok(
            store
                .complete(&absent, token, &sample_response(), LONG)
                .await,
            "complete"
        )
        .await
    );
    assert!(!ok(store.release(&absent, token).await, "release").await);
    assert_eq!(
        ok(store.lookup(&absent).await, "lookup").await,
        None,
        "failed operations must not create records"
    );
}

/// Once completed, a key can be neither completed again, renewed nor released.
pub async fn completed_is_final<S: Store>(store: &S, key: &str) {
    let token = acquire(store, key, fp("a"), LONG).await;
    let first = sample_response();
    assert!(ok(store.complete(key, token, &first, LONG).await, "complete").await);
    let other = StoredResponse::new(StatusCode::OK, HeaderMap::new(), "other".into());
    assert!(
        !ok(
            store.complete(key, token, &other, LONG).await,
            "second complete"
        )
        .await,
        "a completed record must not be overwritten"
    );
    assert!(
        !ok(store.renew(key, token, LONG).await, "renew").await,
        "a completed record has no lease"
    );
    assert!(
        !ok(store.release(key, token).await, "release").await,
        "a completed record must not be released"
    );
    match ok(store.lookup(key).await, "lookup").await {
        Some(Record::Completed { response, .. }) => assert_eq!(response, first),
        other => panic!("expected the first response, got {other:?}"),
    }
}

/// `lookup` reads without claiming.
pub async fn lookup_reads_without_claiming<S: Store>(store: &S, key: &str) {
    assert_eq!(ok(store.lookup(key).await, "lookup").await, None);
    acquire(store, key, fp("a"), LONG).await;
    match ok(store.lookup(key).await, "lookup").await {
        Some(Record::InFlight { fingerprint, .. }) => assert_eq!(fingerprint, fp("a")),
        other => panic!("lookup of a claimed key must see it in flight, got {other:?}"),
    }
}

/// Two keys never see each other.
pub async fn keys_are_independent<S: Store>(store: &S, a: &str, b: &str) {
    let token = acquire(store, a, fp("a"), LONG).await;
    acquire(store, b, fp("a"), LONG).await;
    ok(
        store.complete(a, token, &sample_response(), LONG).await,
        "complete",
    )
    .await;
    assert!(matches!(
        ok(store.lookup(b).await, "lookup").await,
        Some(Record::InFlight { .. })
    ));
}

/// A renewed lease outlives its first deadline.
pub async fn renewal_keeps_the_lease<S: Store>(store: &S, key: &str) {
    // Renewed every quarter of the lease, five times: well past the first lease, and a
    // renewal may be late by three quarters of a lease without failing. Longer than
    // `MEDIUM`: a stall of 600 ms between two renewals has been seen on a loaded
    // two-core machine.
    const LEASE: Duration = Duration::from_secs(2);
    let token = acquire(store, key, fp("a"), LEASE).await;
    for _ in 0..5 {
        tokio::time::sleep(LEASE / 4).await;
        assert!(
            ok(store.renew(key, token, LEASE).await, "renew").await,
            "the owner's renewal must succeed"
        );
    }
    // Well past the first lease, the key is still held.
    match ok(store.claim(key, fp("a"), SHORT).await, "claim").await {
        Claim::Existing(Record::InFlight { .. }) => {}
        other => panic!("a renewed lease must still hold the key, got {other:?}"),
    }
    assert!(
        ok(
            store.complete(key, token, &sample_response(), LONG).await,
            "complete"
        )
        .await,
        "the owner can still complete"
    );
}

/// A lease of `Duration::MAX` (an app that never wants a claim to lapse) is neither an
/// error nor a panic: the key is held, renewed and released like any other. A store may
/// cap it, but at a year or more.
pub async fn longest_lease_is_held<S: Store>(store: &S, key: &str) {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);
    let token = acquire(store, key, fp("a"), Duration::MAX).await;
    match ok(store.claim(key, fp("a"), SHORT).await, "second claim").await {
        Claim::Existing(Record::InFlight {
            lease_remaining, ..
        }) => assert!(
            lease_remaining >= YEAR,
            "a lease of Duration::MAX must hold the key for a year at least, got {lease_remaining:?}"
        ),
        other => panic!("a claim under a lease of Duration::MAX must hold the key, got {other:?}"),
    }
    assert!(
        ok(store.renew(key, token, Duration::MAX).await, "renew").await,
        "the owner's renewal to Duration::MAX must succeed"
    );
    assert!(
        ok(store.release(key, token).await, "release").await,
        "the owner's release must succeed"
    );
    let again = acquire(store, key, fp("a"), LONG).await;
    assert!(ok(store.release(key, again).await, "release").await);
}

/// A completion under a TTL of `Duration::MAX` ("keep it for ever") is kept and replayed,
/// not refused or overflowed: a store cuts what it cannot represent. Its record does not
/// expire on its own: on a shared server, run the kit on a store with a prefix of its
/// own and remove that prefix's keys afterwards.
pub async fn longest_ttl_is_kept<S: Store>(store: &S, key: &str) {
    let under = " under a TTL of Duration::MAX";
    let (_, stored) = complete_and_claim(store, key, Duration::MAX, under).await;
    assert_eq!(
        stored,
        sample_response(),
        "a response kept under a TTL of Duration::MAX must be replayed"
    );
}

/// A lease that is not renewed lapses and the key can be claimed again.
pub async fn lapsed_lease_is_taken_over<S: Store>(store: &S, key: &str) {
    let first = acquire(store, key, fp("a"), SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let second = acquire(store, key, fp("a"), LONG).await;
    assert_ne!(first, second, "the new owner must get a new fencing token");
}

/// The owner whose lease lapsed cannot renew, complete or release the new owner's claim.
pub async fn stale_owner_is_fenced<S: Store>(store: &S, key: &str) {
    let stale = acquire(store, key, fp("a"), SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let current = acquire(store, key, fp("a"), LONG).await;
    let stale_response = StoredResponse::new(StatusCode::OK, HeaderMap::new(), "stale".into());
    assert!(
        !ok(store.renew(key, stale, LONG).await, "stale renew").await,
        "a stale owner must not renew"
    );
    assert!(
        !ok(
            store.complete(key, stale, &stale_response, LONG).await,
            "stale complete"
        )
        .await,
        "a stale owner must not complete"
    );
    assert!(
        !ok(store.release(key, stale).await, "stale release").await,
        "a stale owner must not release"
    );
    let response = sample_response();
    assert!(
        ok(
            store.complete(key, current, &response, LONG).await,
            "complete"
        )
        .await
    );
    match ok(store.lookup(key).await, "lookup").await {
        Some(Record::Completed {
            response: stored, ..
        }) => assert_eq!(stored, response, "the current owner's response wins"),
        other => panic!("expected the current owner's response, got {other:?}"),
    }
}

/// A completed record is gone once its TTL has passed.
pub async fn ttl_expires_the_record<S: Store>(store: &S, key: &str) {
    let token = acquire(store, key, fp("a"), LONG).await;
    assert!(
        ok(
            store.complete(key, token, &sample_response(), MEDIUM).await,
            "complete"
        )
        .await
    );
    assert!(matches!(
        ok(store.lookup(key).await, "lookup").await,
        Some(Record::Completed { .. })
    ));
    tokio::time::sleep(PAST_MEDIUM).await;
    assert_eq!(
        ok(store.lookup(key).await, "lookup").await,
        None,
        "the record must expire with its TTL"
    );
    acquire(store, key, fp("b"), LONG).await;
}

/// A completed record lives for its TTL, not for the lease it was claimed with: a retry
/// after the lease still gets the replay (or, with another fingerprint, the mismatch),
/// never a new claim that would run the handler again.
pub async fn completion_outlives_the_lease<S: Store>(store: &S, key: &str) {
    let token = acquire(store, key, fp("a"), MEDIUM).await;
    assert!(
        ok(
            store.complete(key, token, &sample_response(), LONG).await,
            "complete"
        )
        .await
    );
    tokio::time::sleep(PAST_MEDIUM).await;
    for (body, what) in [("a", "a retry"), ("b", "a reuse with another body")] {
        match ok(
            store.claim(key, fp(body), SHORT).await,
            "claim after the lease",
        )
        .await
        {
            Claim::Existing(Record::Completed {
                fingerprint,
                response,
            }) => {
                assert_eq!(fingerprint, fp("a"), "{what} sees the first fingerprint");
                assert_eq!(
                    response,
                    sample_response(),
                    "{what} sees the stored response"
                );
            }
            other => panic!(
                "{what} after the lease must find the completed record (it lives for its TTL), got {other:?}"
            ),
        }
    }
}

/// Of `n` concurrent claims on one key, exactly one wins; the others see it in flight.
pub async fn concurrent_claims_have_one_winner<S: Store + Clone>(store: &S, key: &str, n: usize) {
    one_winner(store, key, n).await;
}

/// Of `n` concurrent claims on a key whose owner's lease lapsed (a crashed owner), exactly
/// one takes it over, with a new fencing token; the others see the new claim in flight.
pub async fn concurrent_takeovers_have_one_winner<S: Store + Clone>(
    store: &S,
    key: &str,
    n: usize,
) {
    let crashed = acquire(store, key, fp("a"), SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let winner = one_winner(store, key, n).await;
    assert_ne!(
        winner, crashed,
        "the new owner must get a new fencing token"
    );
}

/// Races `n` claims of `key`; checks that exactly one wins and returns its token.
async fn one_winner<S: Store + Clone>(store: &S, key: &str, n: usize) -> FencingToken {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (store, key, start) = (store.clone(), key.to_owned(), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            store.claim(&key, fp("a"), LONG).await
        });
    }
    let mut tokens = HashSet::new();
    let mut in_flight = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(Claim::Acquired(token)) => {
                tokens.insert(token);
            }
            Ok(Claim::Existing(Record::InFlight { .. })) => in_flight += 1,
            other => panic!("a concurrent claim returned {other:?}"),
        }
    }
    assert_eq!(
        tokens.len(),
        1,
        "exactly one of {n} concurrent claims must win, {} did",
        tokens.len()
    );
    assert_eq!(
        in_flight,
        n - 1,
        "every other claim must see the key in flight"
    );
    tokens.into_iter().next().expect("one winner")
}
