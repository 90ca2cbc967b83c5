//! At most once beyond HTTP: queue consumers and plain async functions.
//!
//! Message brokers deliver at least once: after a crash, a time-out or a rebalance the
//! same event arrives again. [`Idempotency::once`] runs a piece of work at most once per
//! key, over the same store and claim protocol as the `#[idempotent]` handlers, and
//! stores its result so that a redelivery gets it back instead of doing the work again.
//!
//! ```
//! use idempotent_runtime::{Idempotency, MemoryStore, once::{OnceError, Outcome}};
//!
//! #[derive(serde::Serialize)]
//! struct Refund { order: u64, cents: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let idempotency = Idempotency::new(MemoryStore::new());
//! let refunds = idempotency.once("refunds");
//! let event = Refund { order: 42, cents: 1000 };
//!
//! // The first delivery does the work...
//! let first = refunds
//!     .run("evt_1", &event, || async { Ok::<_, std::io::Error>(format!("refund of {}", event.cents)) })
//!     .await?;
//! assert!(matches!(first, Outcome::Ran(_)));
//!
//! // ...a redelivery gets its result back without doing it again.
//! let again = refunds
//!     .run("evt_1", &event, || async { Ok::<String, std::io::Error>(unreachable!()) })
//!     .await?;
//! assert_eq!(again, Outcome::Replayed("refund of 1000".to_owned()));
//! # Ok(()) }
//! ```
//!
//! What a consumer does with each outcome:
//!
//! | result | meaning | acknowledge? |
//! | --- | --- | --- |
//! | `Ok(Outcome::Ran(v))` | the work ran now; `v` is stored for the TTL | yes |
//! | `Ok(Outcome::Replayed(v))` | it ran before; `v` is what it returned | yes |
//! | `Err(OnceError::InFlight { .. })` | another consumer is doing it right now | redeliver in a second or so |
//! | `Err(OnceError::Failed(e))` | the work failed; the key was released (or frees up when its lease lapses, if the store is down) | redeliver |
//! | `Err(OnceError::TimedOut)` | the work ran past the app's execution limit and was stopped; the key was released, as for `Failed` | redeliver |
//! | `Err(OnceError::KeyReused)` | the key was used with a different input | dead-letter |
//! | `Err(OnceError::Store(_))` | the store is unavailable; nothing ran | redeliver later |
//! | `Err(OnceError::Input(_))` | the input does not serialise; nothing ran | dead-letter |
//! | `Err(OnceError::Unreadable(_))` | it ran before, but its stored result does not read back as `T` | dead-letter |
//!
//! `Ran` means the work ran, not always that its result was recorded. A completion the
//! store fails is tried again for up to a third of the lease before `run` returns, then
//! in the background for up to one more lease (as for a request, see the crate docs), so
//! a store that comes back in that time still gets the record. When the store stays away
//! or refuses the completion, that is logged, and a duplicate delivered once the lease
//! has lapsed runs the work again. Make work whose second run would do harm check for
//! its own effect too (a unique constraint on the refund, say).
//!
//! `Unreadable` means the work ran: a redelivery would only get the same error until the
//! record expires, and then run the work a second time. It comes from a result type
//! changed between deploys, or a result that did not serialise (a map with keys that are
//! not strings or numbers) or does not read back (a map with number keys inside an
//! internally tagged enum) when the work ran; the last two are logged as errors then.
//!
//! The input is fingerprinted in canonical JSON, like a request body. The work's result
//! is stored as JSON, so it must serialise and deserialise. serde_json writes a NaN or
//! infinite `f64` as `null`: such a result replays as `null` (`None` for an
//! `Option<f64>`), and inputs that differ only there count as the same input.
//!
//! While the work runs, its lease is renewed; if the work panics, the key is released
//! and the panic resumes. Once the work has returned, its result is recorded (or its key
//! released) in a task of its own, which a caller that stops waiting then (a `select!`
//! on shutdown, a `timeout` around `run`) does not cancel, and which
//! [`Idempotency::drain`] waits for. A future dropped mid-work cancels the work itself,
//! and its key is then released as for work that failed, in such a task too: a
//! redelivery runs the work again at once, rather than meeting `InFlight` until the
//! lease lapses. A claim the store has not answered when `run` stops waiting for it (past
//! the store timeout, or dropped) goes to such a task as well, which releases it should
//! the store grant it after all. The app's execution limit
//! ([`Idempotency::with_execution_limit`]) bounds the work from inside, with
//! `TimedOut` as the answer.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::policy::StatusPolicy;
use crate::protocol::{Execution, Guarded, TARGET, release_late, short, spawn_counted, within};
use crate::store::{BoxFuture, Claim, Record, StoreError};
use crate::{Fingerprint, Idempotency, StoredResponse, key};

/// What [`Once::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The work ran now.
    Ran(T),
    /// The work ran before; this is its stored result.
    Replayed(T),
}

impl<T> Outcome<T> {
    /// The result, wherever it came from.
    ///
    /// ```
    /// use idempotent_runtime::once::Outcome;
    /// assert_eq!(Outcome::Replayed(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            Self::Ran(value) | Self::Replayed(value) => value,
        }
    }
}

/// Why [`Once::run`] did not return a result.
#[derive(Debug)]
#[non_exhaustive]
pub enum OnceError<E> {
    /// Another caller holds the key and is running the work now. Redeliver after a
    /// short delay (a second, say), backing off if it is still running: once it has
    /// finished, the redelivery gets its result.
    InFlight {
        /// Time left on its lease. Its owner renews the lease while the work runs, so this
        /// stays near the whole lease and says nothing of when the work ends; it is when
        /// the key frees up at the latest, should the owner have crashed.
        lease_remaining: Duration,
    },
    /// The key was already used with a different input.
    KeyReused,
    /// The work returned an error; the key was released so that it can run again.
    Failed(E),
    /// The work ran past the app's execution limit and was stopped; the key was
    /// released so that it can run again.
    TimedOut,
    /// The store could not be reached or did not answer in time; nothing ran.
    Store(StoreError),
    /// The input could not be serialised to be fingerprinted; nothing ran.
    Input(serde_json::Error),
    /// The work ran before, but its stored result does not read back as the expected
    /// type (the type changed, or the result did not serialise when the work ran).
    Unreadable(serde_json::Error),
}

impl<E: fmt::Display> fmt::Display for OnceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InFlight { .. } => {
                f.write_str("the work for this key is running elsewhere; redeliver it shortly")
            }
            Self::KeyReused => f.write_str("the key was already used with a different input"),
            Self::Failed(err) => write!(f, "the work failed: {err}"),
            Self::TimedOut => f.write_str("the work ran past the execution limit and was stopped"),
            Self::Store(err) => write!(f, "the idempotency store is unavailable: {err}"),
            Self::Input(err) => write!(f, "the input could not be serialised: {err}"),
            Self::Unreadable(err) => write!(
                f,
                "the work ran before, but its stored result cannot be read back: {err}"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for OnceError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(err) => Some(err),
            Self::Store(err) => Some(err),
            Self::Input(err) | Self::Unreadable(err) => Some(err),
            Self::InFlight { .. } | Self::KeyReused | Self::TimedOut => None,
        }
    }
}

/// One kind of work run at most once per key: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Once<'a> {
    idempotency: &'a Idempotency,
    operation: String,
    ttl: Duration,
    lease: Duration,
}

impl Idempotency {
    /// Work called `operation` (keys of different operations never meet), with the app's
    /// TTL and lease.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// let emails = idempotency.once("welcome-email").with_ttl(Duration::from_secs(7 * 24 * 3600));
    /// # let _ = emails;
    /// ```
    pub fn once(&self, operation: impl Into<String>) -> Once<'_> {
        Once {
            idempotency: self,
            operation: operation.into(),
            ttl: self.ttl(),
            lease: self.lease(),
        }
    }
}

impl Once<'_> {
    /// How long a result is kept. At least 1 ms.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long a crashed caller's claim blocks the key. At least 1 ms.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Runs `work` unless it already ran (or is running) for `key` with this `input`.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: &str,
        input: &impl Serialize,
        work: F,
    ) -> Result<Outcome<T>, OnceError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let fingerprint =
            Fingerprint::of_json(&serde_json::to_value(input).map_err(OnceError::Input)?);
        // `once:` where a request has its method: `:` is not allowed in a method, so no
        // request, whatever its method and path, shares a key with this work.
        let store_key = key::namespace("once:", &self.operation, None, key);
        let idempotency = self.idempotency;
        // Late or given up, the claim goes to a task that releases it if it is granted.
        let decided = PendingClaim::new(idempotency, &store_key, fingerprint, self.lease)
            .decide()
            .await;
        let token = match decided {
            Some(Ok(Claim::Acquired(token))) => token,
            Some(Ok(Claim::Existing(record))) if *record.fingerprint() != fingerprint => {
                tracing::warn!(target: TARGET, key = short(&store_key), "key reused with a different input");
                return Err(OnceError::KeyReused);
            }
            Some(Ok(Claim::Existing(Record::InFlight {
                lease_remaining, ..
            }))) => {
                return Err(OnceError::InFlight { lease_remaining });
            }
            Some(Ok(Claim::Existing(Record::Completed { response, .. }))) => {
                let value =
                    serde_json::from_slice(response.body()).map_err(OnceError::Unreadable)?;
                return Ok(Outcome::Replayed(value));
            }
            Some(Err(err)) => return Err(OnceError::Store(err)),
            None => {
                return Err(OnceError::Store(StoreError::new(
                    "the store did not answer in time",
                )));
            }
        };
        let claimed = Claimed {
            execution: Execution {
                idempotency: idempotency.clone(),
                key: store_key,
                token,
                lease: self.lease,
                ttl: self.ttl,
                policy: StatusPolicy::DEFAULT,
            },
            armed: true,
        };
        // The work is dropped before anything else happens: stopped past the limit, it
        // lets go of what it holds before its key is released. The closure is called
        // inside the guard, so that a panic in it before it returns its future is the
        // work's panic too. Declared after `claimed`, it is dropped before it too when
        // this future is.
        let outcome = {
            let work = std::pin::pin!(async move { work().await });
            claimed.execution.guard(work).await
        };
        let execution = claimed.disarm();
        let value = match outcome {
            Guarded::Done(Ok(value)) => value,
            Guarded::Done(Err(err)) => {
                end_claim(execution, End::Release).await;
                return Err(OnceError::Failed(err));
            }
            Guarded::PastLimit => {
                end_claim(execution, End::Release).await;
                return Err(OnceError::TimedOut);
            }
            Guarded::Panicked(panic) => {
                end_claim(execution, End::Release).await;
                std::panic::resume_unwind(panic);
            }
        };
        let body = record_of(&value, &execution.key);
        let stored = StoredResponse::new(StatusCode::OK, HeaderMap::new(), body.into());
        end_claim(execution, End::Complete(stored)).await;
        Ok(Outcome::Ran(value))
    }
}

/// The stored form of a result: its JSON. A result that cannot be serialised (or whose
/// `Serialize` panics) is still the result of work that ran: it is kept as an empty
/// record anyway, so that the key is never run again (its replays get `Unreadable`),
/// and the value goes to this caller. One that serialises but does not read back gets
/// `Unreadable` on replay too; both are logged now, when the work ran, rather than
/// found at the first redelivery.
fn record_of<T: Serialize + DeserializeOwned>(value: &T, key: &str) -> Vec<u8> {
    let serialised =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serde_json::to_vec(value)));
    let problem = match serialised {
        Ok(Ok(body)) => {
            if let Err(err) = serde_json::from_slice::<T>(&body) {
                tracing::error!(target: TARGET, key = short(key), error = %err, "the result does not read back as its type; redeliveries will get `Unreadable`");
            }
            return body;
        }
        Ok(Err(err)) => err.to_string(),
        Err(_) => "its `Serialize` panicked".to_owned(),
    };
    tracing::error!(target: TARGET, key = short(key), error = %problem, "the result cannot be serialised; redeliveries will get `Unreadable`");
    Vec::new()
}

/// A claim the store has not answered yet, owned so that it can outlive its `run`: when
/// the store is late (past the store timeout) or the caller stops waiting (a `timeout`
/// or a `select!` around `run`), it is handed to a task that waits for it for up to a
/// lease and releases it if it was granted, since nobody will run the work for it. A
/// claim granted that way would otherwise hold the key until its lease lapsed.
struct PendingClaim {
    claim: Option<BoxFuture<'static, Result<Claim, StoreError>>>,
    idempotency: Idempotency,
    key: String,
    lease: Duration,
}

impl PendingClaim {
    fn new(
        idempotency: &Idempotency,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Self {
        let (store, owned_key) = (idempotency.clone(), key.to_owned());
        let claim = async move { store.store().claim(&owned_key, fingerprint, lease).await };
        Self {
            claim: Some(Box::pin(claim)),
            idempotency: idempotency.clone(),
            key: key.to_owned(),
            lease,
        }
    }

    /// The store's answer within the store timeout, or `None`.
    async fn decide(mut self) -> Option<Result<Claim, StoreError>> {
        let claim = self.claim.as_mut()?;
        let answer = within(self.idempotency.store_timeout(), claim).await.ok()?;
        self.claim = None;
        Some(answer)
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let (idempotency, key, lease) = (
            self.idempotency.clone(),
            std::mem::take(&mut self.key),
            self.lease,
        );
        spawn_counted(&self.idempotency, async move {
            release_late(&idempotency, &key, lease, claim, lease).await;
        });
    }
}

/// The claim of a [`Once::run`] whose work has not returned. Dropped with its `run`,
/// the work cancelled (a `timeout` or a `select!` around the call), it releases the key
/// in a task of its own, as for work that failed, so that a redelivery runs the work at
/// once instead of meeting `InFlight` until the lease lapses.
struct Claimed {
    execution: Execution,
    armed: bool,
}

impl Claimed {
    /// The claim, for the caller to end now that the work has returned.
    fn disarm(mut self) -> Execution {
        self.armed = false;
        self.execution.clone()
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let execution = self.execution.clone();
        let key = short(&self.execution.key);
        if spawn_counted(&self.execution.idempotency, async move {
            execution.release().await;
        }) {
            tracing::warn!(target: TARGET, key, "the caller stopped waiting and the work was cancelled; its key is released");
        } else {
            tracing::warn!(target: TARGET, key, "the caller stopped waiting and the work was cancelled; no tokio runtime to release its key in, which frees up when the lease lapses");
        }
    }
}

/// How a claim ends.
enum End {
    /// The work failed: the key is released, so that a redelivery runs it again.
    Release,
    /// The work ran: its result is recorded.
    Complete(StoredResponse),
}

/// Ends the claim of `execution`, to the end even if the caller stops waiting: once the
/// work has run, a caller dropped (a `select!` on shutdown, a `timeout` around `run`)
/// must not cancel its record, or a redelivery would run the work again. In a task of
/// its own, counted as work under way for [`Idempotency::drain`].
async fn end_claim(execution: Execution, end: End) {
    let working = execution.idempotency.working();
    let end = async move {
        let _working = working;
        match end {
            End::Release => execution.release().await,
            End::Complete(stored) => execution.complete(&stored).await,
        }
    };
    match tokio::runtime::Handle::try_current() {
        // A panic in the store's own code ends that task, and only it.
        Ok(runtime) => {
            let _ = runtime
                .spawn(tracing::Instrument::in_current_span(end))
                .await;
        }
        Err(_) => end.await,
    }
}
