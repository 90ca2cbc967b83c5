//! A store whose server is gone (every operation fails, or never answers) or whose code
//! is wrong (every operation panics). It stands in for a dead server in protocol tests;
//! the stores' own outage tests use real servers.

use std::time::Duration;

use idempotent_runtime::{
    Claim, FencingToken, Fingerprint, Record, Store, StoreError, StoredResponse,
};

/// A store that fails every operation, never answers, or panics.
#[derive(Clone, Copy)]
pub enum Broken {
    /// Every operation fails at once.
    Failing,
    /// No operation ever completes.
    Hanging,
    /// Every operation panics, as a buggy store of the user's own might.
    Panicking,
}

impl Broken {
    async fn answer<T>(self) -> Result<T, StoreError> {
        match self {
            Self::Failing => Err(StoreError::new("connection refused")),
            Self::Hanging => std::future::pending().await,
            Self::Panicking => panic!("the store has a bug"),
        }
    }
}

impl Store for Broken {
    async fn claim(&self, _: &str, _: Fingerprint, _: Duration) -> Result<Claim, StoreError> {
        self.answer().await
    }
    async fn renew(&self, _: &str, _: FencingToken, _: Duration) -> Result<bool, StoreError> {
        self.answer().await
    }
    async fn complete(
        &self,
        _: &str,
        _: FencingToken,
        _: &StoredResponse,
        _: Duration,
    ) -> Result<bool, StoreError> {
        self.answer().await
    }
    async fn release(&self, _: &str, _: FencingToken) -> Result<bool, StoreError> {
        self.answer().await
    }
    async fn lookup(&self, _: &str) -> Result<Option<Record>, StoreError> {
        self.answer().await
    }
}
