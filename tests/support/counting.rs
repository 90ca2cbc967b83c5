//! A store that counts the calls reaching it, to show which store of a combination
//! answered a request, and the lease its last claim asked for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_runtime::{
    Claim, FencingToken, Fingerprint, Record, Store, StoreError, StoredResponse,
};

/// A store operation.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Claim,
    Renew,
    Complete,
    Release,
    Lookup,
}

/// Calls per operation; clones share the counts, so several stores (one per replica) can
/// count into one tally.
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Tally>);

#[derive(Debug, Default)]
struct Tally {
    calls: [AtomicUsize; 5],
    last_lease: Mutex<Option<Duration>>,
}

impl Calls {
    /// The calls of `op` so far.
    pub fn of(&self, op: Op) -> usize {
        self.0.calls[op as usize].load(Ordering::SeqCst)
    }

    /// The calls of every operation so far.
    pub fn total(&self) -> usize {
        self.0
            .calls
            .iter()
            .map(|calls| calls.load(Ordering::SeqCst))
            .sum()
    }

    /// The lease the last claim asked for.
    pub fn last_lease(&self) -> Option<Duration> {
        *self.0.last_lease.lock().unwrap()
    }

    fn add(&self, op: Op) {
        self.0.calls[op as usize].fetch_add(1, Ordering::SeqCst);
    }
}

/// `inner`, counting each call into [`Calls`] before passing it on.
#[derive(Debug, Clone)]
pub struct Counting<S> {
    inner: S,
    calls: Calls,
}

impl<S: Store> Counting<S> {
    /// Counts the calls to `inner` into `calls`.
    pub fn new(inner: S, calls: &Calls) -> Self {
        Self {
            inner,
            calls: calls.clone(),
        }
    }

    /// The counts.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }
}

impl<S: Store> Store for Counting<S> {
    async fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.calls.add(Op::Claim);
        *self.calls.0.last_lease.lock().unwrap() = Some(lease);
        self.inner.claim(key, fingerprint, lease).await
    }

    async fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.calls.add(Op::Renew);
        self.inner.renew(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.calls.add(Op::Complete);
        self.inner.complete(key, token, response, ttl).await
    }

    async fn release(&self, key: &str, token: FencingToken) -> Result<bool, StoreError> {
        self.calls.add(Op::Release);
        self.inner.release(key, token).await
    }

    async fn lookup(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.calls.add(Op::Lookup);
        self.inner.lookup(key).await
    }
}
