//! The client side: one key per operation, kept across every retry of it.
//!
//! A key protects nothing if a retry sends a new one. With [`reqwest_middleware`], attach
//! [`IdempotencyKeys`] to the client: each `POST`, `PUT`, `PATCH` or `DELETE` it builds is
//! given a fresh key once, when the request is built, and every attempt of it (the retry
//! middleware's included, wherever it sits in the chain) carries that same key. A
//! request that already has an `Idempotency-Key` header keeps it; to choose the key
//! yourself, for example one made with [`key::derive`](crate::key::derive), attach an
//! [`IdempotencyKey`] extension. [`RetryInFlight`] makes `reqwest-retry` wait out a `409`
//! that says the first attempt is still running, instead of giving up.
//!
//! The key belongs to the request builder, so mind two ways of sending:
//!
//! - `RequestBuilder::try_clone` copies the key with everything else. A builder cloned as
//!   a template for several operations sends one key for all of them (different bodies
//!   then get `422`, equal ones the first answer): start each operation from the client.
//! - `client.execute(request)` of a request made with `build()` starts without the
//!   builder's extensions, so each call picks a new key (shared by the retry
//!   middleware's attempts within that call). A retry loop of your own around `execute`
//!   must set the key itself, in the `Idempotency-Key` header of the request.
//!
//! The key goes in the `Idempotency-Key` header, where `#[idempotent]` reads it by
//! default; for an endpoint that reads it elsewhere (`key = header("X-Request-Id")`,
//! `key = query(..)`), set it there yourself. The retry policy decides when to try again,
//! not the `409`'s `Retry-After`: give it retries enough to outlast your slowest handler.
//!
//! ```no_run
//! use idempotent_runtime::client::{IdempotencyKey, IdempotencyKeys, RetryInFlight};
//! use idempotent_runtime::client::reqwest_middleware::ClientBuilder;
//! use idempotent_runtime::client::reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let retry = RetryTransientMiddleware::new_with_policy_and_strategy(
//!     ExponentialBackoff::builder().build_with_max_retries(5),
//!     RetryInFlight,
//! );
//! let client = IdempotencyKeys::attach(ClientBuilder::new(reqwest::Client::new()))
//!     .with(retry)
//!     .build();
//!
//! // A fresh key, the same on every attempt:
//! client.post("https://api.example.com/orders").body("{}").send().await?;
//!
//! // A key of your choosing:
//! let key = idempotent_runtime::key::derive("order-42", "refund", [("cents", "1000")]);
//! client
//!     .post("https://api.example.com/refunds")
//!     .with_extension(IdempotencyKey::new(key))
//!     .send()
//!     .await?;
//! # Ok(()) }
//! ```

use http::{Extensions, HeaderValue, Method, StatusCode};
use reqwest_middleware::{ClientBuilder, Middleware, Next, RequestBuilder, RequestInitialiser};
use reqwest_retry::{DefaultRetryableStrategy, Retryable, RetryableStrategy};

pub use {reqwest_middleware, reqwest_retry};

use crate::FencingToken;
use crate::key::DEFAULT_HEADER;
use crate::response::REPLAYED_HEADER;

/// The key every attempt of one request carries.
///
/// ```
/// use idempotent_runtime::client::IdempotencyKey;
///
/// let key = IdempotencyKey::new("order-42-refund");
/// assert_eq!(key.as_str(), "order-42-refund");
/// assert_eq!(IdempotencyKey::random().as_str().len(), 32);
/// assert_ne!(IdempotencyKey::random(), IdempotencyKey::random());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A key of your choosing. The server's rules apply (1 to 255 bytes of visible
    /// ASCII, or a quoted string): a request whose key the server would reject with
    /// `400` is not sent, and fails with an error that says why.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// 128 bits from the operating system's random source, as 32 hex characters: a key
    /// nobody else can guess, so another client cannot be replayed this request's
    /// response by sending the same body under it (on an endpoint without a `scope`).
    ///
    /// Should the random source fail, which it does not on the platforms Rust supports
    /// short of a misconfigured sandbox, the key is drawn from std's per-process random
    /// hash keys, a counter and the clock instead: still unique, and logged at `WARN`.
    pub fn random() -> Self {
        let mut bits = [0u8; 16];
        if let Err(err) = getrandom::fill(&mut bits) {
            tracing::warn!(target: crate::protocol::TARGET, error = %err, "the operating system's random source failed; the idempotency key is drawn from std's random hash keys instead");
            bits[..8].copy_from_slice(&FencingToken::random().0.to_be_bytes());
            bits[8..].copy_from_slice(&FencingToken::random().0.to_be_bytes());
        }
        Self(format!("{:032x}", u128::from_be_bytes(bits)))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Gives each unsafe request one `Idempotency-Key` for all its attempts: both a
/// [`RequestInitialiser`] (which picks the key once per request) and a [`Middleware`]
/// (which puts it on every attempt). [`attach`](Self::attach) installs both.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdempotencyKeys;

impl IdempotencyKeys {
    /// Installs the initialiser and the middleware on `builder`.
    pub fn attach(builder: ClientBuilder) -> ClientBuilder {
        builder.with_init(Self).with(Self)
    }
}

impl RequestInitialiser for IdempotencyKeys {
    fn init(&self, request: RequestBuilder) -> RequestBuilder {
        // Picked here, once per request, and kept in its extensions, which every retry
        // attempt shares. A later `with_extension(IdempotencyKey::new(..))` replaces it.
        request.with_extension(IdempotencyKey::random())
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotencyKeys {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let unsafe_method = matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        if unsafe_method && !request.headers().contains_key(DEFAULT_HEADER) {
            let key = extensions
                .get::<IdempotencyKey>()
                .cloned()
                .unwrap_or_else(|| {
                    // Built without the initialiser: remember the key for later attempts.
                    let key = IdempotencyKey::random();
                    extensions.insert(key.clone());
                    key
                });
            // The server's own rules: a key it would answer `400` is not sent.
            let value = match crate::key::parse_key(key.as_str().as_bytes()) {
                Ok(_) => HeaderValue::from_str(key.as_str())
                    .map_err(|_| "it is not a valid header value".to_owned()),
                Err(err) => Err(err.to_string()),
            };
            match value {
                Ok(value) => {
                    request.headers_mut().insert(DEFAULT_HEADER, value);
                }
                Err(reason) => {
                    return Err(reqwest_middleware::Error::middleware(InvalidKey(
                        key, reason,
                    )));
                }
            }
        }
        next.run(request, extensions).await
    }
}

/// An [`IdempotencyKey`] the server would reject, and why.
#[derive(Debug)]
struct InvalidKey(IdempotencyKey, String);

impl std::fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request not sent: {} (key {:?})",
            self.1,
            self.0.as_str()
        )
    }
}

impl std::error::Error for InvalidKey {}

/// `reqwest-retry`'s default strategy, plus: a `409` with `Retry-After` (the first
/// attempt is still running) is retried, so the client ends up with its response.
/// A `422` (the key was used for another request) is never retried, nor is a replayed
/// response (`Idempotent-Replayed`), a `409` with `Retry-After` included: that is the
/// stored answer of a handler, and every retry would get it again.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryInFlight;

impl RetryableStrategy for RetryInFlight {
    fn handle(
        &self,
        result: &Result<reqwest::Response, reqwest_middleware::Error>,
    ) -> Option<Retryable> {
        if let Ok(response) = result {
            let headers = response.headers();
            // The handler's own answer, stored (a `5xx`, `408`, `429` or `409` the
            // endpoint keeps): every retry would get it again.
            if headers.contains_key(REPLAYED_HEADER) {
                return DefaultRetryableStrategy
                    .handle(result)
                    .map(|_| Retryable::Fatal);
            }
            if response.status() == StatusCode::CONFLICT
                && headers.contains_key(http::header::RETRY_AFTER)
            {
                return Some(Retryable::Transient);
            }
        }
        DefaultRetryableStrategy.handle(result)
    }
}
