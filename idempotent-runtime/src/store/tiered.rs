//! "Redis for speed, the database for durability": a durable store that decides, and a
//! fast store that serves replays.
//!
//! [`TieredStore`] sends every claim, renewal, completion and release to the durable
//! store, which alone decides who owns a key. The fast store holds copies of completed
//! records, and the short-lived claims that write them:
//!
//! - a claim first looks the key up in the fast store; a completed record there is the
//!   answer (a replay, or a `422` when the fingerprint differs) and the durable store is
//!   not asked;
//! - otherwise the durable store claims; when it answers with a completed record, the fast
//!   store is filled with it for [`fill_ttl`](TieredStore::with_fill_ttl), so the next
//!   retry is served from there;
//! - a completion is written to the durable store first and, once it is accepted there,
//!   copied to the fast store with the fingerprint of its claim (unless
//!   [turned off](TieredStore::with_copy_on_completion): a fast store filled on misses
//!   only), for `fill_ttl` or what is left of the endpoint's TTL, whichever is
//!   shorter. That TTL is counted from before the durable write, so the copy expires
//!   with the durable record at the latest (give or take the fast store's own round
//!   trip): it does not answer for a key the durable store has let go. The fingerprint
//!   comes from the claim this store granted, which it remembers until the claim
//!   completes or is released (or, for a claim that never does, until a sweep finds its
//!   lease lapsed). A completion whose claim it does not know copies nothing, and the
//!   next claim of the key fills the fast store on its miss.
//!
//! Losing the fast store loses nothing: its errors are logged and ignored, and each of its
//! operations is bounded by [`fast_timeout`](TieredStore::with_fast_timeout). A failing
//! fast store fails on every request, so a store warns of its fast store's failures
//! once every 10 seconds at most, with the number of those in between, which it logs at
//! `debug`. A fast store that hangs slows a request by up to three of them (a claim
//! looks up, then fills with a claim and a completion) instead of failing it. Those
//! count against the app's [store timeout](crate::Idempotency::with_store_timeout), so
//! keep `fast_timeout` well under a third of it (the defaults are 100 ms and 5 s). The
//! price of the copy is that a replay may still be served from the fast store up to
//! `fill_ttl` after the durable record expired.
//!
//! The fast store may also be a [`MemoryStore`](crate::MemoryStore) in each replica: an
//! in-process copy of completed responses in front of Redis or Postgres, so that a retry
//! that reaches a replica which has seen the key is answered without a round trip. Each
//! replica then fills its own copy, on its own completions and on its first miss of a
//! key. It holds the copies of about `fill_ttl` (10 minutes by default) of new keys;
//! cap it with [`MemoryStore::with_max_entries`](crate::MemoryStore::with_max_entries)
//! and make it [`evicting`](crate::MemoryStore::evicting): once it is full, each new
//! copy takes the place of one that expires first, so it keeps about the newest keys.
//! A capped store that does not evict skips copies (and warns of them, as failures)
//! until its records expire.
//!
//! ```
//! use idempotent_runtime::{Idempotency, MemoryStore, store::TieredStore};
//!
//! // In production: `TieredStore::new(postgres_store, redis_store)`, or
//! // `TieredStore::new(redis_store, copies)` for replays from each replica's memory.
//! let copies = MemoryStore::new().with_max_entries(100_000).evicting();
//! let store = TieredStore::new(MemoryStore::new(), copies);
//! let idempotency = Idempotency::new(store);
//! # let _ = idempotency;
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Claim, FencingToken, LONGEST, Record, Store, StoreError};
use crate::protocol::within;
use crate::{Fingerprint, StoredResponse};

const TARGET: &str = "idempotent::tiered";

/// A durable store that decides and a fast store that serves replays.
///
/// See the [module docs](self) for what each store does.
#[derive(Debug, Clone)]
pub struct TieredStore<D, F> {
    durable: D,
    fast: F,
    fill_ttl: Duration,
    fast_timeout: Duration,
    copy_completions: bool,
    granted: Arc<Mutex<Granted>>,
    warnings: Arc<Warnings>,
}

/// How often a store warns of its fast store's failures at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// When a fast-store failure is warned of, and how many were not since the last warning.
#[derive(Debug)]
struct Warnings {
    origin: Instant,
    /// Milliseconds after `origin` before which failures are not warned of.
    next: AtomicU64,
    /// Failures not warned of since the last warning.
    quiet: AtomicU64,
}

impl Default for Warnings {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            next: AtomicU64::new(0),
            quiet: AtomicU64::new(0),
        }
    }
}

impl Warnings {
    /// Whether a failure at `now` is warned of: if so, with how many were not since the
    /// last warning; if not, it is counted.
    fn warn_at(&self, now: Instant) -> Option<u64> {
        let at = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        let next = self.next.load(Ordering::Relaxed);
        let every = WARN_EVERY.as_millis() as u64;
        if at >= next
            && self
                .next
                .compare_exchange(
                    next,
                    at.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.quiet.swap(0, Ordering::Relaxed));
        }
        self.quiet.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The claims this store granted that have not completed or been released, by token:
/// their key, fingerprint and lease deadline (`None`: past what an `Instant` holds).
#[derive(Default)]
struct Granted {
    claims: HashMap<FencingToken, (Box<str>, Fingerprint, Option<Instant>)>,
    /// The size at which the next insertion first drops the claims whose lease lapsed.
    sweep_at: usize,
}

/// Claims that never complete nor are released (a completion given up during an outage)
/// stay until a sweep finds their lease lapsed. Sweeps run when the map has doubled
/// since the last, and not below this size.
const SWEEP_FLOOR: usize = 1024;

impl Granted {
    fn insert(
        &mut self,
        key: &str,
        token: FencingToken,
        fingerprint: Fingerprint,
        lease: Duration,
    ) {
        let now = Instant::now();
        if self.claims.len() >= self.sweep_at {
            self.claims
                .retain(|_, (_, _, deadline)| deadline.is_none_or(|deadline| deadline > now));
            self.sweep_at = (self.claims.len() * 2).max(SWEEP_FLOOR);
            // Gives back the room a burst took.
            self.claims.shrink_to(self.sweep_at);
        }
        self.claims.insert(
            token,
            (key.into(), fingerprint, now.checked_add(lease.min(LONGEST))),
        );
    }

    fn renew(&mut self, key: &str, token: FencingToken, lease: Duration) {
        if let Some((claimed, _, deadline)) = self.claims.get_mut(&token)
            && **claimed == *key
        {
            *deadline = Instant::now().checked_add(lease.min(LONGEST));
        }
    }

    /// Forgets the claim; its fingerprint, if it was this key's.
    fn remove(&mut self, key: &str, token: FencingToken) -> Option<Fingerprint> {
        match self.claims.remove(&token) {
            Some((claimed, fingerprint, _)) if *claimed == *key => Some(fingerprint),
            Some(other) => {
                // Another key's claim drew the same token (a store with tokens per key).
                self.claims.insert(token, other);
                None
            }
            None => None,
        }
    }
}

impl fmt::Debug for Granted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Granted")
            .field("claims", &self.claims.len())
            .finish()
    }
}

impl<D: Store, F: Store> TieredStore<D, F> {
    /// How long a record copied to the fast store on a miss is kept there: 10 minutes.
    pub const DEFAULT_FILL_TTL: Duration = Duration::from_secs(10 * 60);
    /// How long one fast-store operation may take before it is skipped: 100 ms.
    pub const DEFAULT_FAST_TIMEOUT: Duration = Duration::from_millis(100);

    /// Claims in `durable`, replays from `fast`.
    pub fn new(durable: D, fast: F) -> Self {
        Self {
            durable,
            fast,
            fill_ttl: Self::DEFAULT_FILL_TTL,
            fast_timeout: Self::DEFAULT_FAST_TIMEOUT,
            copy_completions: true,
            granted: Arc::default(),
            warnings: Arc::default(),
        }
    }

    /// How long a copy stays in the fast store at most. A copy made on a miss is kept
    /// for this long, as the durable record's own expiry is not known then, so keep it
    /// short against your shortest endpoint TTL; a copy made on a completion for this
    /// long or what is left of the endpoint's TTL, whichever is shorter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{MemoryStore, store::TieredStore};
    ///
    /// let store = TieredStore::new(MemoryStore::new(), MemoryStore::new())
    ///     .with_fill_ttl(Duration::from_secs(60));
    /// assert_eq!(store.fill_ttl(), Duration::from_secs(60));
    /// ```
    pub fn with_fill_ttl(mut self, ttl: Duration) -> Self {
        self.fill_ttl = ttl;
        self
    }

    /// How long one fast-store operation may take before it is given up.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{MemoryStore, store::TieredStore};
    ///
    /// let store = TieredStore::new(MemoryStore::new(), MemoryStore::new())
    ///     .with_fast_timeout(Duration::from_millis(20));
    /// assert_eq!(store.fast_timeout(), Duration::from_millis(20));
    /// ```
    pub fn with_fast_timeout(mut self, timeout: Duration) -> Self {
        self.fast_timeout = timeout;
        self
    }

    /// Whether completions are copied to the fast store: yes by default, so that even
    /// the first retry of a key is served from there. With `false` the fast store is
    /// filled on a miss only: the first retry of a key costs a durable round trip, as
    /// without the fast store, and fills it for the next ones, while a first execution
    /// costs the durable store's claim and completion and a lookup in the fast store:
    /// no copy, and no note of the claim's fingerprint for it. Most keys are never
    /// retried: this keeps the fast store to the keys that were, and the copies' writes
    /// off every first execution.
    ///
    /// ```
    /// use idempotent_runtime::{MemoryStore, store::TieredStore};
    ///
    /// let store = TieredStore::new(MemoryStore::new(), MemoryStore::new())
    ///     .with_copy_on_completion(false);
    /// assert!(!store.copies_on_completion());
    /// ```
    pub fn with_copy_on_completion(mut self, copy: bool) -> Self {
        self.copy_completions = copy;
        self
    }

    /// The fill TTL.
    pub fn fill_ttl(&self) -> Duration {
        self.fill_ttl
    }

    /// The fast-store timeout.
    pub fn fast_timeout(&self) -> Duration {
        self.fast_timeout
    }

    /// Whether completions are copied to the fast store.
    pub fn copies_on_completion(&self) -> bool {
        self.copy_completions
    }

    /// The store that decides.
    pub fn durable(&self) -> &D {
        &self.durable
    }

    /// The store that serves replays.
    pub fn fast(&self) -> &F {
        &self.fast
    }

    /// How many granted claims it remembers.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.granted().claims.len()
    }

    fn granted(&self) -> std::sync::MutexGuard<'_, Granted> {
        self.granted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a fast-store operation; a failure or a time-out is logged and is `None`.
    async fn fast_op<T>(
        &self,
        what: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        let err = match within(self.fast_timeout, op).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(err)) => err,
            Err(_) => StoreError::new(format!("timed out after {:?}", self.fast_timeout)),
        };
        match self.warnings.warn_at(Instant::now()) {
            Some(quiet) => tracing::warn!(
                target: TARGET,
                error = %err,
                not_warned_of = quiet,
                "fast store {what} failed; using the durable store (further failures within {}s are logged at debug)",
                WARN_EVERY.as_secs(),
            ),
            None => {
                tracing::debug!(target: TARGET, error = %err, "fast store {what} failed; using the durable store")
            }
        }
        None
    }

    /// A completed record from the fast store, if it has one.
    async fn cached(&self, key: &str) -> Option<Record> {
        match self.fast_op("lookup", self.fast.lookup(key)).await? {
            Some(record @ Record::Completed { .. }) => Some(record),
            _ => None,
        }
    }

    /// Copies a completed record into the fast store, to be kept until `until`.
    async fn fill(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        response: &StoredResponse,
        until: Instant,
    ) {
        // The fast store only knows claim-then-complete; a short claim is enough, since
        // nothing else ever claims there.
        let lease = self.fast_timeout.max(Duration::from_secs(1));
        if let Some(Claim::Acquired(token)) = self
            .fast_op("fill", self.fast.claim(key, fingerprint, lease))
            .await
        {
            // What is left once the fast store has answered the claim.
            let ttl = until.saturating_duration_since(Instant::now());
            if ttl.is_zero() {
                self.fast_op("fill", self.fast.release(key, token)).await;
            } else {
                self.fast_op("fill", self.fast.complete(key, token, response, ttl))
                    .await;
            }
        }
    }
}

impl<D: Store, F: Store> Store for TieredStore<D, F> {
    async fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        if let Some(record) = self.cached(key).await {
            return Ok(Claim::Existing(record));
        }
        // The durable store's claim and the copy are boxed: the protocol boxes this
        // future for every request, and kept under about 1 KB (a Postgres claim alone
        // is 2.8 KB), that box comes from the allocator's per-thread cache, and a replay
        // from the fast store carries no room for the steps it does not take.
        let claim = Box::pin(self.durable.claim(key, fingerprint, lease)).await?;
        match &claim {
            Claim::Acquired(token) if self.copy_completions => {
                self.granted().insert(key, *token, fingerprint, lease);
            }
            Claim::Existing(Record::Completed {
                fingerprint,
                response,
            }) => {
                let until = Instant::now() + self.fill_ttl.min(LONGEST);
                Box::pin(self.fill(key, *fingerprint, response, until)).await;
            }
            Claim::Acquired(_) | Claim::Existing(_) => {}
        }
        Ok(claim)
    }

    async fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let renewed = self.durable.renew(key, token, lease).await?;
        if renewed {
            self.granted().renew(key, token, lease);
        }
        Ok(renewed)
    }

    async fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        // After an error the claim may still be in place, and the protocol try again:
        // its fingerprint is kept for that.
        // Boxed for the same reason as in `claim`.
        let completed = Box::pin(self.durable.complete(key, token, response, ttl)).await?;
        let fingerprint = self.granted().remove(key, token);
        if !completed {
            return Ok(false);
        }
        // The durable record expires `ttl` after the store wrote it, which was after
        // `started`: a copy kept until `started + ttl` expires first.
        if let Some(fingerprint) = fingerprint {
            let until = started + ttl.min(self.fill_ttl).min(LONGEST);
            self.fill(key, fingerprint, response, until).await;
        }
        Ok(true)
    }

    async fn release(&self, key: &str, token: FencingToken) -> Result<bool, StoreError> {
        // Whatever the answer, the protocol does not complete a claim it released.
        self.granted().remove(key, token);
        self.durable.release(key, token).await
    }

    async fn lookup(&self, key: &str) -> Result<Option<Record>, StoreError> {
        match self.cached(key).await {
            Some(record) => Ok(Some(record)),
            None => self.durable.lookup(key).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims that never complete nor are released do not pile up once their leases
    /// lapse, and live ones are never dropped.
    #[test]
    fn lapsed_claims_are_swept_and_live_ones_kept() {
        let mut granted = Granted::default();
        let fp = Fingerprint::of_bytes(b"order");
        for token in 0..10 * SWEEP_FLOOR as u64 {
            granted.insert("lapsed", FencingToken(token), fp, Duration::ZERO);
            assert!(granted.claims.len() <= SWEEP_FLOOR);
        }
        let live = 10 * SWEEP_FLOOR as u64;
        for token in live..2 * live {
            granted.insert("live", FencingToken(token), fp, Duration::from_secs(60));
        }
        assert!(granted.claims.len() >= live as usize);
        for token in live..2 * live {
            assert_eq!(granted.remove("live", FencingToken(token)), Some(fp));
        }
    }

    /// The first failure is warned of; those within the next `WARN_EVERY` are counted,
    /// and the first after it is warned of with that count.
    #[test]
    fn fast_store_failures_are_warned_of_once_per_interval() {
        let warnings = Warnings::default();
        let start = warnings.origin;
        assert_eq!(warnings.warn_at(start), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(warnings.warn_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(warnings.warn_at(start + WARN_EVERY), Some(3));
        assert_eq!(warnings.warn_at(start + WARN_EVERY), None);
        assert_eq!(warnings.warn_at(start + 3 * WARN_EVERY), Some(1));
    }

    /// A token drawn for two keys: neither completion copies the other's fingerprint.
    #[test]
    fn a_token_of_another_key_gives_no_fingerprint() {
        let mut granted = Granted::default();
        let token = FencingToken(7);
        granted.insert(
            "a",
            token,
            Fingerprint::of_bytes(b"a"),
            Duration::from_secs(60),
        );
        assert_eq!(granted.remove("b", token), None);
        assert_eq!(
            granted.remove("a", token),
            Some(Fingerprint::of_bytes(b"a"))
        );
    }
}
