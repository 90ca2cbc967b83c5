//! The app-wide handle: the store and the defaults every endpoint falls back to.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::response::StoredHeaders;
use crate::store::{DynStore, Store};

/// The store and the app-wide defaults, given to the router once.
///
/// `#[idempotent]` handlers find it in the router state. Either make it the whole state:
///
/// ```
/// use axum::{Router, routing::post};
/// use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
///
/// #[idempotent]
/// async fn create() -> &'static str {
///     "created"
/// }
///
/// let app: Router = Router::new()
///     .route("/things", post(create))
///     .with_state(Idempotency::new(MemoryStore::new()));
/// ```
///
/// or a field of your own state, reached through [`FromRef`]:
///
/// ```
/// use axum::{Router, extract::{FromRef, State}, routing::post};
/// use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
///
/// #[derive(Clone, FromRef)]
/// struct AppState {
///     db: Db,
///     idempotency: Idempotency,
/// }
///
/// #[derive(Clone)]
/// struct Db;
///
/// #[idempotent(ttl = "24h")]
/// async fn create(State(_db): State<Db>) -> &'static str {
///     "created"
/// }
///
/// let state = AppState { db: Db, idempotency: Idempotency::new(MemoryStore::new()) };
/// let app: Router = Router::new().route("/things", post(create)).with_state(state);
/// ```
#[derive(Clone)]
pub struct Idempotency {
    inner: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn DynStore>,
    ttl: Duration,
    lease: Duration,
    body_limit: usize,
    response_limit: usize,
    store_timeout: Duration,
    stored_headers: StoredHeaders,
    execution_limit: Option<Duration>,
    /// The requests under way, for `drain`; shared by every clone.
    working: TaskTracker,
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("ttl", &self.inner.ttl)
            .field("lease", &self.inner.lease)
            .field("body_limit", &self.inner.body_limit)
            .field("response_limit", &self.inner.response_limit)
            .field("store_timeout", &self.inner.store_timeout)
            .field("stored_headers", &self.inner.stored_headers)
            .field("execution_limit", &self.inner.execution_limit)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// How long a response is kept when the endpoint says nothing: 24 hours.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
    /// How long a claim lives without renewal when the endpoint says nothing: 60 seconds.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
    /// The largest request body read: 2 MiB, as axum's own default.
    pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
    /// The largest response stored: 4 MiB.
    pub const DEFAULT_RESPONSE_LIMIT: usize = 4 * 1024 * 1024;
    /// How long a store operation may take before the request fails closed: 5 seconds.
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

    /// A handle over `store` with the default settings.
    pub fn new(store: impl Store) -> Self {
        Self {
            inner: Arc::new(Config {
                store: Arc::new(store),
                ttl: Self::DEFAULT_TTL,
                lease: Self::DEFAULT_LEASE,
                body_limit: Self::DEFAULT_BODY_LIMIT,
                response_limit: Self::DEFAULT_RESPONSE_LIMIT,
                store_timeout: Self::DEFAULT_STORE_TIMEOUT,
                stored_headers: StoredHeaders::All,
                execution_limit: None,
                working: TaskTracker::new(),
            }),
        }
    }

    /// Waits until the requests this handle's endpoints are working on have finished:
    /// their handlers, and the records or releases of their keys. Call it after the
    /// server's graceful shutdown and before the runtime ends, so that a request whose
    /// client went away (its handler goes on in a task of its own) still completes and
    /// is recorded instead of being dropped with the runtime. Requests that arrive in
    /// the meantime are waited for too.
    ///
    /// ```
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// // let app = Router::new()...with_state(idempotency.clone());
    /// // axum::serve(listener, app).with_graceful_shutdown(signal).await?;
    /// idempotency.drain().await;
    /// # }
    /// ```
    pub async fn drain(&self) {
        self.inner.working.close();
        self.inner.working.wait().await;
    }

    /// Counts a request as under way until the token is dropped.
    pub(crate) fn working(&self) -> TaskTrackerToken {
        self.inner.working.token()
    }

    /// Whether [`drain`](Self::drain) has been called.
    pub(crate) fn draining(&self) -> bool {
        self.inner.working.is_closed()
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// How long responses are kept for endpoints that set no `ttl`. At least 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new()).with_ttl(Duration::from_secs(3600));
    /// assert_eq!(idempotency.ttl(), Duration::from_secs(3600));
    /// ```
    pub fn with_ttl(self, ttl: Duration) -> Self {
        self.edit(|c| c.ttl = ttl.max(Duration::from_millis(1)))
    }

    /// The lease for endpoints that set no `lease`: how long a claim outlives a crashed
    /// owner. A live owner renews it every third of the lease, counted from when the
    /// claim's answer arrived, which can be up to a store timeout after the store granted
    /// it: keep every lease at least three times the
    /// [store timeout](Self::with_store_timeout). At least 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new()).with_lease(Duration::from_secs(10));
    /// assert_eq!(idempotency.lease(), Duration::from_secs(10));
    /// ```
    pub fn with_lease(self, lease: Duration) -> Self {
        self.edit(|c| c.lease = lease.max(Duration::from_millis(1)))
    }

    /// The largest request body read for fingerprinting; larger ones get `413`.
    ///
    /// ```
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new()).with_body_limit(64 * 1024);
    /// assert_eq!(idempotency.body_limit(), 64 * 1024);
    /// ```
    pub fn with_body_limit(self, bytes: usize) -> Self {
        self.edit(|c| c.body_limit = bytes)
    }

    /// The largest response body stored. A larger one is still sent in full to the
    /// first caller; retries then get a `409` problem (`#response-not-replayable`),
    /// never a second execution.
    ///
    /// ```
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new()).with_response_limit(1024);
    /// assert_eq!(idempotency.response_limit(), 1024);
    /// ```
    pub fn with_response_limit(self, bytes: usize) -> Self {
        self.edit(|c| c.response_limit = bytes)
    }

    /// How long one store operation may take; past it the store counts as unavailable.
    /// Keep it well above the store's round trip: an operation that takes longer (claim,
    /// lease renewal, completion) fails, and a claim that fails is a `503`. And keep it
    /// below a third of every lease, so that a slow claim's answer leaves time for the
    /// first renewal.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new()).with_store_timeout(Duration::from_secs(1));
    /// assert_eq!(idempotency.store_timeout(), Duration::from_secs(1));
    /// ```
    pub fn with_store_timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.store_timeout = timeout)
    }

    /// Which of a handler's headers are stored and replayed: all of them by default
    /// (never `Set-Cookie` or hop-by-hop headers, always `Content-Type`, `Content-Encoding`
    /// and `Content-Range`).
    ///
    /// ```
    /// use http::HeaderName;
    /// use idempotent_runtime::{Idempotency, MemoryStore, response::StoredHeaders};
    ///
    /// // A per-response request id must not be replayed as if it were the retry's own.
    /// let idempotency = Idempotency::new(MemoryStore::new())
    ///     .with_stored_headers(StoredHeaders::except([HeaderName::from_static("x-request-id")]));
    /// assert!(!idempotency.stored_headers().keeps(&HeaderName::from_static("x-request-id")));
    /// ```
    pub fn with_stored_headers(self, headers: StoredHeaders) -> Self {
        self.edit(|c| c.stored_headers = headers)
    }

    /// The longest a handler may run, the reading of a response body it stores
    /// included. Past it the handler is stopped (its future dropped), its key released
    /// so that a retry runs again, and the client gets `500` `#handler-timed-out`, as
    /// after a panic. At least 1 ms, at most about 100 years.
    ///
    /// A handler stopped mid-way may have done part of its work, or all of it without
    /// answering (a payment that went through downstream); the retry then does it
    /// again. So set the limit well above the slowest run you expect: it is meant for a
    /// handler that will never answer, not for a slow one. Requests without a key,
    /// which the protocol passes through, are not limited.
    ///
    /// Without a limit, the default, a handler runs to completion however long it takes,
    /// and its key stays in flight, its lease renewed, for as long: a handler stuck on a
    /// call that never answers holds its key until the process ends. A client that
    /// disconnects never stops a handler either way, and neither does a timeout layer
    /// around the router (it only stops waiting for the answer). The limit applies to
    /// [`once`](Self::once) work too ([`OnceError::TimedOut`](crate::once::OnceError::TimedOut)).
    ///
    /// A handler that does not yield (blocking work on the async thread) cannot be
    /// stopped until it does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_runtime::{Idempotency, MemoryStore};
    ///
    /// let idempotency = Idempotency::new(MemoryStore::new())
    ///     .with_execution_limit(Duration::from_secs(30));
    /// assert_eq!(idempotency.execution_limit(), Some(Duration::from_secs(30)));
    /// assert_eq!(Idempotency::new(MemoryStore::new()).execution_limit(), None);
    /// ```
    pub fn with_execution_limit(self, limit: Duration) -> Self {
        let limit = limit.clamp(Duration::from_millis(1), crate::store::LONGEST);
        self.edit(|c| c.execution_limit = Some(limit))
    }

    /// The execution limit, if any.
    pub fn execution_limit(&self) -> Option<Duration> {
        self.inner.execution_limit
    }

    /// Which headers are stored.
    pub fn stored_headers(&self) -> &StoredHeaders {
        &self.inner.stored_headers
    }

    /// The default TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The default lease.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// The request body limit.
    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    /// The stored response limit.
    pub fn response_limit(&self) -> usize {
        self.inner.response_limit
    }

    /// The store operation timeout.
    pub fn store_timeout(&self) -> Duration {
        self.inner.store_timeout
    }

    pub(crate) fn store(&self) -> &Arc<dyn DynStore> {
        &self.inner.store
    }
}

/// A router state that gives `#[idempotent]` handlers their [`Idempotency`].
///
/// Implemented for every state `S` with `Idempotency: FromRef<S>`: an `Idempotency`
/// itself, or a state with an `Idempotency` field and `#[derive(FromRef)]`.
///
/// ```
/// use axum::extract::FromRef;
/// use idempotent_runtime::{Idempotency, IdempotencyState, MemoryStore};
///
/// #[derive(Clone)]
/// struct AppState {
///     idempotency: Idempotency,
/// }
///
/// impl FromRef<AppState> for Idempotency {
///     fn from_ref(state: &AppState) -> Self {
///         state.idempotency.clone()
///     }
/// }
///
/// let state = AppState { idempotency: Idempotency::new(MemoryStore::new()) };
/// let _ = state.idempotency();
/// ```
#[diagnostic::on_unimplemented(
    message = "the router state `{Self}` gives `#[idempotent]` handlers no idempotency store",
    label = "`#[idempotent]` handlers need an `Idempotency` in the router state",
    note = "pass one to the router with `.with_state(Idempotency::new(MemoryStore::new()))`, or add an `Idempotency` field to your state and `#[derive(FromRef)]` (or `impl FromRef<{Self}> for Idempotency`)"
)]
pub trait IdempotencyState {
    /// The handle held by this state.
    fn idempotency(&self) -> Idempotency;
}

#[diagnostic::do_not_recommend]
impl<S> IdempotencyState for S
where
    Idempotency: FromRef<S>,
{
    fn idempotency(&self) -> Idempotency {
        Idempotency::from_ref(self)
    }
}
