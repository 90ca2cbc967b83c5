//! Where claims and responses live.
//!
//! A store is anything that implements [`Store`]: the embedded [`MemoryStore`], the
//! Redis and Postgres stores behind their cargo features, or your own. The protocol
//! needs five operations, each atomic:
//!
//! - [`claim`](Store::claim) decides, in one step, between *acquired* (the caller owns
//!   the key for a lease and gets a fresh [`FencingToken`]) and the [`Record`] already
//!   there. A record that is in flight with a lapsed lease counts as absent.
//! - [`renew`](Store::renew) extends the lease of the current owner.
//! - [`complete`](Store::complete) stores the response with its TTL.
//! - [`release`](Store::release) deletes the claim so that a retry runs again.
//! - [`lookup`](Store::lookup) reads what is there.
//!
//! `renew`, `complete` and `release` take the claim's fencing token and act only while the
//! record is still *in flight under that token*; otherwise they change nothing and return
//! `Ok(false)`. That is what keeps a request whose lease was lost from overwriting the
//! result of the request that took over. A store may forget an in-flight record once
//! its lease has lapsed, or refuse its owner from then on; it must not let its owner
//! act after another claim took it over. The memory and Redis stores refuse a lapsed
//! lease; the Postgres store keeps it for its owner until a claim takes the key over or
//! a purge deletes it, so that an owner cut off from the database for longer than its
//! lease can still store its response.
//!
//! The conformance kit (`testkit` feature) checks all of this against any store.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Fingerprint, StoredResponse};

pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod tiered;

pub use memory::MemoryStore;
pub use tiered::TieredStore;

/// The longest lease or TTL the embedded and Postgres stores keep (about 100 years);
/// longer ones, `Duration::MAX` for "for ever" say, are cut to it, so that a deadline
/// neither overflows an `Instant` nor leaves Postgres' timestamp range.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Proof of ownership of a claim, unique per claim of a key.
///
/// Stores that keep state elsewhere write it as a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// A token that is, with overwhelming probability, unique: for stores that have no
    /// counter of their own.
    ///
    /// ```
    /// use idempotent_runtime::FencingToken;
    /// assert_ne!(FencingToken::random(), FencingToken::random());
    /// ```
    pub fn random() -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        hasher.write_u64(nanos);
        // Zero is kept free so that stores can use it as "no token".
        Self(hasher.finish().max(1))
    }
}

/// What is stored under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// A request holds a live lease.
    InFlight {
        /// Fingerprint of the request that holds the lease.
        fingerprint: Fingerprint,
        /// Time left on the lease.
        lease_remaining: Duration,
    },
    /// The request completed; its response is kept until the TTL ends.
    Completed {
        /// Fingerprint of the request that completed.
        fingerprint: Fingerprint,
        /// What it answered.
        response: StoredResponse,
    },
}

impl Record {
    /// The fingerprint of the request the record belongs to.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Self::InFlight { fingerprint, .. } | Self::Completed { fingerprint, .. } => fingerprint,
        }
    }
}

/// The outcome of [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The caller now owns the key until its lease ends.
    Acquired(FencingToken),
    /// Something is already there.
    Existing(Record),
}

/// A store could not be reached or answered something unexpected.
///
/// The protocol fails closed on it: `503`, the handler not run.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// An error described by `message`.
    ///
    /// ```
    /// use idempotent_runtime::StoreError;
    /// let err = StoreError::new("connection refused");
    /// assert_eq!(err.to_string(), "connection refused");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by `source`.
    pub fn from_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Storage for claims and responses.
///
/// Keys are opaque strings of at most a few hundred bytes (the protocol passes a hex
/// SHA-256). Every method is one atomic step; see the [module docs](self) for the rules
/// the fencing token imposes. Implement it for your own storage and run the conformance
/// kit (`testkit` feature) against it:
///
/// ```
/// use std::time::Duration;
/// use idempotent_runtime::{Claim, FencingToken, Fingerprint, MemoryStore, Record, Store, StoredResponse};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotent_runtime::StoreError> {
/// let store = MemoryStore::new();
/// let fp = Fingerprint::of_bytes(b"body");
/// let Claim::Acquired(token) = store.claim("k", fp, Duration::from_secs(60)).await? else {
///     unreachable!("a new key is acquired");
/// };
/// let response = StoredResponse::new(http::StatusCode::CREATED, Default::default(), "ok".into());
/// assert!(store.complete("k", token, &response, Duration::from_secs(3600)).await?);
/// assert_eq!(
///     store.claim("k", fp, Duration::from_secs(60)).await?,
///     Claim::Existing(Record::Completed { fingerprint: fp, response }),
/// );
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an idempotency store",
    label = "this type does not implement `idempotent_runtime::Store`",
    note = "use `MemoryStore`, `RedisStore` or `PostgresStore`, or implement `Store` for your own type"
)]
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for `lease`, or returns what is there.
    fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Extends the lease to `lease` from now; `Ok(false)` if `token` no longer owns the key.
    fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores `response` for `ttl`; `Ok(false)` if `token` no longer owns the key.
    fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the claim; `Ok(false)` if `token` no longer owns the key.
    fn release(
        &self,
        key: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Reads the record under `key`, if any.
    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;
}

impl<T: Store> Store for Arc<T> {
    fn claim(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        (**self).claim(key, fingerprint, lease)
    }

    fn renew(
        &self,
        key: &str,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).renew(key, token, lease)
    }

    fn complete(
        &self,
        key: &str,
        token: FencingToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).complete(key, token, response, ttl)
    }

    fn release(
        &self,
        key: &str,
        token: FencingToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).release(key, token)
    }

    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        (**self).lookup(key)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe mirror of [`Store`], so that one `Idempotency` handle (and so one router
/// state type) serves every store.
pub(crate) trait DynStore: Send + Sync + 'static {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn release<'a>(
        &'a self,
        key: &'a str,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

impl<T: Store> DynStore for T {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(Store::claim(self, key, fingerprint, lease))
    }
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: FencingToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::renew(self, key, token, lease))
    }
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: FencingToken,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::complete(self, key, token, response, ttl))
    }
    fn release<'a>(
        &'a self,
        key: &'a str,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::release(self, key, token))
    }
}
