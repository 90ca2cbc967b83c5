//! A memory store whose first call of one operation misbehaves: it fails, or answers only
//! after a delay. It stands in for a store with a passing fault.

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The first completion fails without taking effect.
    FailedComplete,
    /// The first release fails without taking effect.
    FailedRelease,
}

pub struct Flaky {
    inner: MemoryStore,
    fault: Fault,
    spent: AtomicBool,
}

impl Flaky {
    pub fn new(fault: Fault) -> Self {
        Self {
            inner: MemoryStore::new(),
            fault,
            spent: AtomicBool::new(false),
        }
    }

    /// Whether this call of `op` is the one that misbehaves.
    fn strikes(&self, op: Fault) -> bool {
        self.fault == op && !self.spent.swap(true, Ordering::SeqCst)
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
        self.inner.renew(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        if self.strikes(Fault::FailedComplete) {
            return Err(StoreError::new("connection reset"));
        }
        self.inner.complete(key, token, response, ttl).await
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
