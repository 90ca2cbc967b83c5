//! A memory store whose first calls of one operation misbehave: they fail, or answer only
//! after a delay. It stands in for a store with a passing fault.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idempotent_runtime::{
    Claim, FencingToken, Fingerprint, MemoryStore, Record, Store, StoreError, StoredResponse,
};

/// Which operation misbehaves, once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The first claim takes effect and answers only after this delay, even if its
    /// caller stopped waiting.
    SlowClaim(Duration),
    /// The first this many completions fail without taking effect.
    FailedCompletes(u32),
    /// The first completion takes effect, but its answer is lost: an error.
    LostComplete,
    /// The first release fails without taking effect.
    FailedRelease,
    /// The first this many renewals fail without taking effect.
    FailedRenewals(u32),
    /// Every renewal answers that the lease is lost, as after a takeover.
    LostLease,
    /// The first completion takes effect only after this delay, and not at all if its
    /// caller stops waiting before.
    SlowComplete(Duration),
    /// The first completion panics, as a store of one's own with a bug might.
    PanickingComplete,
    /// The first completion takes effect but answers only after its TTL has run out and
    /// another request's record ([`replacing_fingerprint`], [`replacing_response`]) has
    /// taken its place: a TTL shorter than a round trip.
    ReplacedComplete,
}

/// The fingerprint of the request whose record replaces a completion
/// ([`Fault::ReplacedComplete`]).
pub fn replacing_fingerprint() -> Fingerprint {
    Fingerprint::of_bytes(b"another order")
}

/// Its response.
pub fn replacing_response() -> StoredResponse {
    StoredResponse::new(
        axum::http::StatusCode::CREATED,
        Default::default(),
        "another order".into(),
    )
}

pub struct Flaky {
    inner: MemoryStore,
    fault: Fault,
    struck: AtomicU32,
}

impl Flaky {
    pub fn new(fault: Fault) -> Self {
        Self {
            inner: MemoryStore::new(),
            fault,
            struck: AtomicU32::new(0),
        }
    }

    /// Whether this call of `op` is one that misbehaves.
    fn strikes(&self, op: Fault) -> bool {
        let times = match op {
            Fault::FailedRenewals(times) | Fault::FailedCompletes(times) => times,
            _ => 1,
        };
        self.fault == op && self.struck.fetch_add(1, Ordering::SeqCst) < times
    }
}

impl Store for Flaky {
    async fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        if let Fault::SlowClaim(delay) = self.fault
            && self.strikes(self.fault)
        {
            // Like a command already sent to a server: it takes effect whether or not
            // anyone still waits for the answer.
            let (inner, key) = (self.inner.clone(), key.to_owned());
            let granted = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                inner.claim(&key, fingerprint, lease).await
            });
            return granted
                .await
                .map_err(|err| StoreError::from_source("claim task failed", err))?;
        }
        self.inner.claim(key, fingerprint, lease).await
    }

    async fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        if let Fault::FailedRenewals(_) = self.fault
            && self.strikes(self.fault)
        {
            return Err(StoreError::new("connection reset"));
        }
        if self.fault == Fault::LostLease {
            return Ok(false);
        }
        self.inner.renew(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        if let Fault::FailedCompletes(_) = self.fault
            && self.strikes(self.fault)
        {
            return Err(StoreError::new("connection reset"));
        }
        if let Fault::SlowComplete(delay) = self.fault
            && self.strikes(self.fault)
        {
            tokio::time::sleep(delay).await;
        }
        if self.strikes(Fault::PanickingComplete) {
            panic!("a bug in the store's completion");
        }
        if self.strikes(Fault::ReplacedComplete) {
            let completed = self.inner.complete(key, token, response, ttl).await?;
            tokio::time::sleep(ttl + Duration::from_millis(5)).await;
            let forever = Duration::from_secs(3600);
            let claim = self
                .inner
                .claim(key, replacing_fingerprint(), forever)
                .await?;
            let Claim::Acquired(other) = claim else {
                panic!("the expired key is claimed again, got {claim:?}");
            };
            self.inner
                .complete(key, other, &replacing_response(), forever)
                .await?;
            return Ok(completed);
        }
        let completed = self.inner.complete(key, token, response, ttl).await;
        if self.strikes(Fault::LostComplete) {
            return Err(StoreError::new("connection reset"));
        }
        completed
    }

    async fn release(&self, key: &str, token: FencingToken) -> Result<bool, StoreError> {
        if self.strikes(Fault::FailedRelease) {
            return Err(StoreError::new("connection reset"));
        }
        self.inner.release(key, token).await
    }

    async fn lookup(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.lookup(key).await
    }
}
