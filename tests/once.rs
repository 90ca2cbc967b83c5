//! Work run at most once per key outside HTTP: what a queue consumer relies on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_runtime::once::{Once, OnceError, Outcome};
use idempotent_runtime::{Idempotency, MemoryStore};

mod support;
use support::broken::Broken;
use support::flaky::{Fault, Flaky};

#[derive(serde::Serialize)]
struct Event {
    order: u64,
    cents: u64,
}

const EVENT: Event = Event {
    order: 42,
    cents: 1000,
};

/// Work that counts its runs and answers with the count.
async fn counted(runs: &AtomicUsize) -> Result<usize, std::io::Error> {
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

/// Redelivers `evt_1` until it gets the replay of the first run's result, for at most
/// `limit`: in flight meanwhile, never run again.
async fn replayed_within(refunds: &Once<'_>, runs: &AtomicUsize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match refunds.run("evt_1", &EVENT, || counted(runs)).await {
            Ok(Outcome::Replayed(1)) => return,
            Err(OnceError::InFlight { .. }) => {}
            other => panic!("expected the replay or in flight, got {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the result was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_redelivery_gets_the_stored_result() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let refunds = idempotency.once("refunds");
    let runs = AtomicUsize::new(0);
    let first = refunds.run("evt_1", &EVENT, || counted(&runs)).await;
    assert_eq!(first.ok(), Some(Outcome::Ran(1)));
    for _ in 0..3 {
        let again = refunds.run("evt_1", &EVENT, || counted(&runs)).await;
        assert_eq!(again.ok(), Some(Outcome::Replayed(1)));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Keys of another operation never meet these.
    let emails = idempotency.once("emails");
    let other = emails.run("evt_1", &EVENT, || counted(&runs)).await;
    assert_eq!(other.ok(), Some(Outcome::Ran(2)));
}

/// The result of work whose completion the store failed for a while is still recorded
/// once the store answers again, so a redelivery gets it rather than running the work.
#[tokio::test]
async fn a_result_the_store_failed_to_record_for_a_while_is_kept_once_it_answers() {
    // The three attempts before `run` returns and the first one after it fail.
    let idempotency = Idempotency::new(Flaky::new(Fault::FailedCompletes(4)));
    let refunds = idempotency.once("refunds");
    let runs = AtomicUsize::new(0);
    let first = refunds.run("evt_1", &EVENT, || counted(&runs)).await;
    assert_eq!(first.ok(), Some(Outcome::Ran(1)));
    replayed_within(&refunds, &runs, Duration::from_secs(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A consumer that stops waiting for `run` once the work has returned (a `select!` on
/// shutdown, a `timeout` around the call) still leaves the record behind: a redelivery
/// gets the result instead of running the work again.
#[tokio::test]
async fn a_caller_that_stops_waiting_after_the_work_loses_no_record() {
    let idempotency = Idempotency::new(Flaky::new(Fault::SlowComplete(Duration::from_millis(300))));
    let refunds = idempotency
        .once("refunds")
        .with_lease(Duration::from_secs(10));
    let runs = AtomicUsize::new(0);
    let given_up = tokio::time::timeout(
        Duration::from_millis(100),
        refunds.run("evt_1", &EVENT, || counted(&runs)),
    )
    .await;
    assert!(given_up.is_err(), "the caller stopped waiting");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran before that");
    // Until the record lands the key is in flight; a lost record would keep it so for
    // the whole lease, then let a redelivery run the work again.
    replayed_within(&refunds, &runs, Duration::from_secs(3)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A consumer that stops waiting while the work runs (a `timeout` around `run`) cancels
/// the work, and its key is released as for work that failed: a redelivery runs it
/// again at once, rather than meeting `InFlight` until the lease lapses.
#[tokio::test]
async fn a_caller_that_stops_waiting_during_the_work_releases_its_key() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let refunds = idempotency
        .once("refunds")
        .with_lease(Duration::from_secs(3600));
    let started = AtomicUsize::new(0);
    let given_up = tokio::time::timeout(
        Duration::from_millis(100),
        refunds.run("evt_1", &EVENT, || async {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<usize, std::io::Error>(0)
        }),
    )
    .await;
    assert!(given_up.is_err(), "the caller stopped waiting");
    assert_eq!(started.load(Ordering::SeqCst), 1, "the work had started");
    // The key is released in a task of its own: in flight until that task has run.
    runs_within(&refunds).await;
}

/// Redelivers `evt_1` until it runs the work, for at most 3 s: in flight meanwhile.
async fn runs_within(refunds: &Once<'_>) {
    let runs = AtomicUsize::new(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match refunds.run("evt_1", &EVENT, || counted(&runs)).await {
            Ok(Outcome::Ran(1)) => return,
            Err(OnceError::InFlight { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("expected the redelivery to run the work, got {other:?}"),
        }
    }
}

/// A claim the store grants only after `run` stopped waiting for it (the store timeout,
/// or a `timeout` around `run`) is released, since nobody runs the work for it: a
/// redelivery runs the work once it has been, not a lease later.
#[tokio::test]
async fn a_claim_granted_after_run_stopped_waiting_is_released() {
    // Past the store timeout: `run` answers with a store error.
    let idempotency = Idempotency::new(Flaky::new(Fault::SlowClaim(Duration::from_millis(300))))
        .with_store_timeout(Duration::from_millis(50));
    let refunds = idempotency
        .once("refunds")
        .with_lease(Duration::from_secs(3600));
    let late = refunds
        .run("evt_1", &EVENT, || async { Ok::<u32, std::io::Error>(0) })
        .await;
    assert!(matches!(late, Err(OnceError::Store(_))), "{late:?}");
    // Redelivered once the store has granted the claim.
    tokio::time::sleep(Duration::from_millis(400)).await;
    runs_within(&refunds).await;

    // Dropped by its caller while the store decides.
    let idempotency = Idempotency::new(Flaky::new(Fault::SlowClaim(Duration::from_millis(300))));
    let refunds = idempotency
        .once("refunds")
        .with_lease(Duration::from_secs(3600));
    let given_up = tokio::time::timeout(
        Duration::from_millis(50),
        refunds.run("evt_1", &EVENT, || async { Ok::<u32, std::io::Error>(0) }),
    )
    .await;
    assert!(given_up.is_err(), "the caller stopped waiting");
    tokio::time::sleep(Duration::from_millis(400)).await;
    runs_within(&refunds).await;
}

#[tokio::test]
async fn the_same_key_with_another_input_is_refused() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let refunds = idempotency.once("refunds");
    let runs = AtomicUsize::new(0);
    refunds
        .run("evt_1", &EVENT, || counted(&runs))
        .await
        .expect("first run");
    let other = Event {
        order: 42,
        cents: 1,
    };
    let reused = refunds.run("evt_1", &other, || counted(&runs)).await;
    assert!(matches!(reused, Err(OnceError::KeyReused)), "{reused:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_result_that_does_not_read_back_is_never_run_again() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let ratios = idempotency.once("ratios");
    let runs = AtomicUsize::new(0);
    // serde_json writes NaN as `null`, which does not read back as an f64.
    let first = ratios
        .run("evt_1", &EVENT, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(f64::NAN)
        })
        .await;
    assert!(
        matches!(first, Ok(Outcome::Ran(v)) if v.is_nan()),
        "{first:?}"
    );
    let again = ratios
        .run("evt_1", &EVENT, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(0.5)
        })
        .await;
    assert!(matches!(again, Err(OnceError::Unreadable(_))), "{again:?}");
    assert!(again.unwrap_err().to_string().contains("ran before"));

    // A result type changed between deploys: the same.
    let refunds = idempotency.once("refunds");
    refunds
        .run("evt_2", &EVENT, || counted(&runs))
        .await
        .expect("first run");
    let changed = refunds
        .run("evt_2", &EVENT, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>("refunded".to_owned())
        })
        .await;
    assert!(
        matches!(changed, Err(OnceError::Unreadable(_))),
        "{changed:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each work ran once");
}

/// A result whose `Serialize` panics still ends the claim: the work ran, so the key
/// holds an (unreadable) record instead of staying in flight until its lease lapses
/// and running the work again.
#[tokio::test]
async fn a_result_whose_serialize_panics_is_never_run_again() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Receipt(u64);
    impl serde::Serialize for Receipt {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("a bug in a hand-written Serialize");
        }
    }

    let idempotency = Idempotency::new(MemoryStore::new());
    let receipts = idempotency
        .once("receipts")
        .with_lease(Duration::from_secs(60));
    let runs = AtomicUsize::new(0);
    let work = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Receipt(7))
    };
    let first = receipts.run("evt_1", &EVENT, work).await;
    assert_eq!(first.ok(), Some(Outcome::Ran(Receipt(7))));
    let again = receipts.run("evt_1", &EVENT, work).await;
    assert!(matches!(again, Err(OnceError::Unreadable(_))), "{again:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn work_past_the_execution_limit_is_stopped_and_its_key_released() {
    let idempotency =
        Idempotency::new(MemoryStore::new()).with_execution_limit(Duration::from_secs(1));
    let refunds = idempotency.once("refunds");
    let stuck = refunds
        .run("evt_1", &EVENT, || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<u32, std::io::Error>(0)
        })
        .await;
    assert!(matches!(stuck, Err(OnceError::TimedOut)), "{stuck:?}");
    let runs = AtomicUsize::new(0);
    let retried = refunds.run("evt_1", &EVENT, || counted(&runs)).await;
    assert_eq!(retried.ok(), Some(Outcome::Ran(1)), "the key was released");
}

#[tokio::test]
async fn failed_work_releases_its_key() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let refunds = idempotency.once("refunds");
    let failed = refunds
        .run("evt_1", &EVENT, || async {
            Err::<u32, _>(std::io::Error::other("gateway down"))
        })
        .await;
    assert!(matches!(failed, Err(OnceError::Failed(_))), "{failed:?}");
    let runs = AtomicUsize::new(0);
    let retried = refunds.run("evt_1", &EVENT, || counted(&runs)).await;
    assert_eq!(
        retried.ok(),
        Some(Outcome::Ran(1)),
        "the redelivery runs again"
    );
}

#[tokio::test]
async fn panicking_work_releases_its_key_and_the_panic_goes_on() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let panicked = tokio::spawn({
        let idempotency = idempotency.clone();
        async move {
            idempotency
                .once("refunds")
                .run("evt_1", &EVENT, || async {
                    if EVENT.cents > 0 {
                        panic!("bug in the refund code");
                    }
                    Ok::<u32, std::io::Error>(0)
                })
                .await
        }
    })
    .await;
    assert!(panicked.is_err_and(|err| err.is_panic()));
    let runs = AtomicUsize::new(0);
    let retried = idempotency
        .once("refunds")
        .run("evt_1", &EVENT, || counted(&runs))
        .await;
    assert_eq!(retried.ok(), Some(Outcome::Ran(1)));

    // A closure that panics before it returns its future (parsing the event, say) is
    // the work panicking too.
    let panicked = tokio::spawn({
        let idempotency = idempotency.clone();
        async move {
            idempotency
                .once("refunds")
                .run("evt_2", &EVENT, || {
                    let cents: u64 = "not a number".parse().expect("a valid amount");
                    async move { Ok::<u64, std::io::Error>(cents) }
                })
                .await
        }
    })
    .await;
    assert!(panicked.is_err_and(|err| err.is_panic()));
    let retried = idempotency
        .once("refunds")
        .run("evt_2", &EVENT, || counted(&runs))
        .await;
    assert_eq!(retried.ok(), Some(Outcome::Ran(2)));
}

#[tokio::test]
async fn an_unreachable_store_runs_nothing() {
    let idempotency =
        Idempotency::new(Broken::Hanging).with_store_timeout(Duration::from_millis(30));
    let runs = AtomicUsize::new(0);
    let result = idempotency
        .once("refunds")
        .run("evt_1", &EVENT, || counted(&runs))
        .await;
    assert!(matches!(result, Err(OnceError::Store(_))), "{result:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Many consumers receive the same event at once, and keep redelivering it while the
/// work (slower than its lease) runs: it runs once.
async fn concurrent_deliveries_run_the_work_once(consumers: Vec<Idempotency>, operation: &str) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, idempotency) in consumers.into_iter().cycle().take(40).enumerate() {
        let (runs, operation) = (Arc::clone(&runs), operation.to_owned());
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10 * (i as u64 % 8))).await;
            idempotency
                .once(operation)
                // Renewed every 333 ms: only a stall of twice that would lapse it.
                .with_lease(Duration::from_secs(1))
                .run("evt_1", &EVENT, || async {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Ok::<_, std::io::Error>(n)
                })
                .await
        });
    }
    let (mut ran, mut in_flight) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("no panic") {
            Ok(Outcome::Ran(1)) => ran += 1,
            Ok(Outcome::Replayed(1)) => {}
            Err(OnceError::InFlight { .. }) => in_flight += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ran, 1);
    assert!(in_flight > 0, "deliveries during the work saw it in flight");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_in_one_process() {
    let idempotency = Idempotency::new(MemoryStore::new());
    concurrent_deliveries_run_the_work_once(vec![idempotency], "refunds").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_across_consumers_sharing_redis() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let store = idempotent_runtime::RedisStore::connect(url.as_str())
            .await
            .expect("Redis on REDIS_URL");
        consumers.push(Idempotency::new(store));
    }
    let operation = format!(
        "refunds-{:016x}",
        idempotent_runtime::FencingToken::random().0
    );
    concurrent_deliveries_run_the_work_once(consumers, &operation).await;
}

/// An HTTP request and `Once` work never share a key, whatever the request's method and
/// path: `ONCE /refunds` is a valid request line, and `/refunds` a valid operation name.
#[tokio::test]
async fn no_request_shares_a_key_with_once_work() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::any;
    use tower::ServiceExt;

    #[idempotent_runtime::idempotent]
    async fn refund() -> &'static str {
        "1"
    }

    let idempotency = Idempotency::new(MemoryStore::new());
    let app = axum::Router::new()
        .route("/refunds", any(refund))
        .with_state(idempotency.clone());
    let request = Request::builder()
        .method("ONCE")
        .uri("/refunds")
        .header("idempotency-key", "evt_1")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"order":42,"cents":1000}"#))
        .unwrap();
    assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::OK);

    let runs = AtomicUsize::new(0);
    let refunds = idempotency.once("/refunds");
    let outcome = refunds.run("evt_1", &EVENT, || counted(&runs)).await;
    assert_eq!(outcome.ok(), Some(Outcome::Ran(1)), "the work ran");
}
