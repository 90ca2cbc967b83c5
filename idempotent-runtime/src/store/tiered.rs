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
//!   read back from it for its fingerprint (a round trip more) and copied to the fast
//!   store with the endpoint's TTL.
//!
//! Losing the fast store loses nothing: its errors are logged and ignored, and each of its
//! operations is bounded by [`fast_timeout`](TieredStore::with_fast_timeout). A fast store
//! that hangs slows a request by up to three of them (a claim looks up, then fills with a
//! claim and a completion) instead of failing it. Those count against the app's
//! [store timeout](crate::Idempotency::with_store_timeout), so keep `fast_timeout` well
//! under a third of it (the defaults are 100 ms and 5 s). The price of the copy is that a
//! replay may still be served from the fast store up to `fill_ttl` after the durable
//! record expired.
//!
//! ```
//! use idempotent_runtime::{Idempotency, MemoryStore, store::TieredStore};
//!
//! // In production: `TieredStore::new(postgres_store, redis_store)`.
//! let store = TieredStore::new(MemoryStore::new(), MemoryStore::new());
//! let idempotency = Idempotency::new(store);
//! # let _ = idempotency;
//! ```

use std::future::Future;
use std::time::Duration;

use super::{Claim, FencingToken, Record, Store, StoreError};
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
        }
    }

    /// How long a record copied to the fast store on a miss stays there. The durable
    /// record's own expiry is not known at that point, so keep this short against your
    /// shortest endpoint TTL.
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

    /// The fill TTL.
    pub fn fill_ttl(&self) -> Duration {
        self.fill_ttl
    }

    /// The fast-store timeout.
    pub fn fast_timeout(&self) -> Duration {
        self.fast_timeout
    }

    /// The store that decides.
    pub fn durable(&self) -> &D {
        &self.durable
    }

    /// The store that serves replays.
    pub fn fast(&self) -> &F {
        &self.fast
    }

    /// Runs a fast-store operation; a failure or a time-out is logged and is `None`.
    async fn fast_op<T>(
        &self,
        what: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        match within(self.fast_timeout, op).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                tracing::warn!(target: TARGET, error = %err, "fast store {what} failed; using the durable store");
                None
            }
            Err(_) => {
                tracing::warn!(target: TARGET, "fast store {what} timed out; using the durable store");
                None
            }
        }
    }

    /// A completed record from the fast store, if it has one.
    async fn cached(&self, key: &str) -> Option<Record> {
        match self.fast_op("lookup", self.fast.lookup(key)).await? {
            Some(record @ Record::Completed { .. }) => Some(record),
            _ => None,
        }
    }

    /// Copies a completed record into the fast store.
    async fn fill(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) {
        // The fast store only knows claim-then-complete; a short claim is enough, since
        // nothing else ever claims there.
        let lease = self.fast_timeout.max(Duration::from_secs(1));
        if let Some(Claim::Acquired(token)) = self
            .fast_op("fill", self.fast.claim(key, fingerprint, lease))
            .await
        {
            self.fast_op("fill", self.fast.complete(key, token, response, ttl))
                .await;
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
        let claim = self.durable.claim(key, fingerprint, lease).await?;
        if let Claim::Existing(Record::Completed {
            fingerprint,
            response,
        }) = &claim
        {
            self.fill(key, *fingerprint, response, self.fill_ttl).await;
        }
        Ok(claim)
    }

    fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.durable.renew(key, token, lease)
    }

    async fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // The fingerprint is not passed to `complete`; read it back from the durable
        // record, which the completion just wrote. Unless that record is gone already
        // (a TTL shorter than a round trip) and another request's is there instead: its
        // fingerprint would make the copy replay this response to that request.
        if !self.durable.complete(key, token, response, ttl).await? {
            return Ok(false);
        }
        if let Ok(Some(Record::Completed {
            fingerprint,
            response: stored,
        })) = self.durable.lookup(key).await
            && stored == *response
        {
            self.fill(key, fingerprint, response, ttl).await;
        }
        Ok(true)
    }

    fn release(
        &self,
        key: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.durable.release(key, token)
    }

    async fn lookup(&self, key: &str) -> Result<Option<Record>, StoreError> {
        match self.cached(key).await {
            Some(record) => Ok(Some(record)),
            None => self.durable.lookup(key).await,
        }
    }
}
