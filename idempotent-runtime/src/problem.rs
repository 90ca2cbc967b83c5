//! The errors the protocol itself produces, as RFC 9457 problem details.
//!
//! Every answer that does not come from the handler is `application/problem+json`
//! with a stable `type`, a `title`, the `status` and a human `detail`:
//!
//! ```json
//! {"type":"https://docs.rs/idempotent-runtime/latest/idempotent_runtime/problem/index.html#request-in-flight",
//!  "title":"A request with this idempotency key is still being processed",
//!  "status":409,
//!  "detail":"a request with this idempotency key is being processed; retry with the same key to get its response"}
//! ```
//!
//! | `type` anchor | status | when |
//! | --- | --- | --- |
//! | `#invalid-key` | 400 | the key is empty, longer than 255 bytes, not visible ASCII, or a malformed quoted string |
//! | `#multiple-keys` | 400 | more than one key header |
//! | `#missing-key` | 400 | the endpoint is `required` and the request has no key |
//! | `#missing-scope` | 400 | the endpoint's key is scoped by a header the keyed request lacks |
//! | `#body-unreadable` | 400 | the request body could not be read |
//! | `#request-in-flight` | 409 | another request with this key holds a live lease (`Retry-After: 1`) |
//! | `#body-too-large` | 413 | the request body is larger than the limit |
//! | `#key-reused` | 422 | the key was used with a different request (body or query string) |
//! | `#handler-panicked` | 500 | the handler panicked; the key was released so a retry runs again |
//! | `#handler-timed-out` | 500 | the handler ran past the app's execution limit; it was stopped and the key released |
//! | `#response-failed` | 500 | the handler answered, but its response body failed while being produced; the key was released |
//! | `#request-failed` | 500 | the request failed outside the handler (a store that panicked); the key may stay claimed until its lease lapses |
//! | `#response-not-replayable` | 409 | the request was processed but its response was too large to keep |
//! | `#store-unavailable` | 503 | the store could not be reached; the handler did not run |
//!
//! Each `type` links to its section below.
//!
//! # invalid-key
//!
//! `400`. The key must be 1 to 255 bytes of visible ASCII once unquoted; the quoted form
//! allows only `\"` and `\\` escapes. Fix the client; the request was not processed.
//!
//! # multiple-keys
//!
//! `400`. The request carried the key header (or query parameter) more than once. Send
//! exactly one.
//!
//! # missing-key
//!
//! `400`. The endpoint is `required` and the request had no key. Send one, generated once
//! per operation and reused on every retry of it.
//!
//! # missing-scope
//!
//! `400`. The endpoint keeps keys apart by a request header (`scope = header(..)`), and
//! the request had a key but not that header. Send the header with every keyed request;
//! the request was not processed.
//!
//! # body-unreadable
//!
//! `400`. The request body could not be read (the connection broke while sending it).
//! Retry with the same key.
//!
//! # request-in-flight
//!
//! `409`. A request with this key is being processed right now. Retry after `Retry-After`
//! (1 second) with the same key and body, backing off if it is still running: once it
//! has finished you get its response.
//!
//! # body-too-large
//!
//! `413`. The body is larger than the app's limit; nothing was processed and the key was
//! not used up.
//!
//! # key-reused
//!
//! `422`. The key was already used with a different request: another body or query
//! string (the fingerprint differs). A key names one operation; use a new key for a new
//! operation.
//!
//! # handler-panicked
//!
//! `500`. The handler failed before answering. Its key was released: a retry with the
//! same key runs it again.
//!
//! # handler-timed-out
//!
//! `500`. The handler ran longer than the app's execution limit
//! ([`Idempotency::with_execution_limit`](crate::Idempotency::with_execution_limit)) and
//! was stopped before answering. Its key was released: a retry with the same key runs
//! it again.
//!
//! # response-failed
//!
//! `500`. The handler answered, but its response body returned an error before it was
//! complete (a stream that broke), so there is no whole response to send or keep. Its
//! key was released: a retry with the same key runs the handler again. A handler whose
//! work has effects should do it before it answers, not while its body streams.
//!
//! # request-failed
//!
//! `500`. The request failed outside the handler, in the idempotency layer itself (a
//! store implementation that panicked, say). Whether the handler ran is not known, and
//! its key may stay claimed until the lease lapses: a retry with the same key gets `409`
//! until then, and afterwards the stored response or, if none was stored, a new run.
//!
//! # response-not-replayable
//!
//! `409`. The request with this key was processed, but its response was larger than the
//! app keeps, so it cannot be replayed. Do not retry it; look the result up instead.
//!
//! # store-unavailable
//!
//! `503`. The idempotency store could not be reached, so the request was not processed
//! (it never runs unprotected). Retry after `Retry-After` seconds with the same key.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Prefix of every problem `type` URI.
pub const TYPE_BASE: &str =
    "https://docs.rs/idempotent-runtime/latest/idempotent_runtime/problem/index.html#";

/// What went wrong; each kind has a fixed status and `type`.
///
/// ```
/// use idempotent_runtime::problem::ProblemKind;
///
/// assert_eq!(ProblemKind::InFlight.status(), 409);
/// assert!(ProblemKind::InFlight.type_uri().ends_with("#request-in-flight"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The key is empty, too long, not visible ASCII or a malformed quoted string (400).
    InvalidKey,
    /// More than one key header (400).
    MultipleKeys,
    /// The endpoint requires a key and the request has none (400).
    MissingKey,
    /// The endpoint scopes keys by a header the keyed request lacks (400).
    MissingScope,
    /// The request body could not be read (400).
    BodyUnreadable,
    /// Another request with the same key holds a live lease (409).
    InFlight,
    /// The request body is larger than the limit (413).
    BodyTooLarge,
    /// The key was already used with a different request (422).
    KeyReused,
    /// The handler panicked (500).
    HandlerPanicked,
    /// The handler ran past the execution limit and was stopped (500).
    HandlerTimedOut,
    /// The handler's response body failed while being produced (500).
    ResponseFailed,
    /// The request failed outside the handler; the key may stay claimed (500).
    RequestFailed,
    /// The first response was too large to store, so it cannot be replayed (409).
    ResponseNotReplayable,
    /// The store is unreachable; nothing ran (503).
    StoreUnavailable,
}

impl ProblemKind {
    /// The HTTP status of this problem.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidKey
            | Self::MultipleKeys
            | Self::MissingKey
            | Self::MissingScope
            | Self::BodyUnreadable => 400,
            Self::InFlight | Self::ResponseNotReplayable => 409,
            Self::BodyTooLarge => 413,
            Self::KeyReused => 422,
            Self::HandlerPanicked
            | Self::HandlerTimedOut
            | Self::ResponseFailed
            | Self::RequestFailed => 500,
            Self::StoreUnavailable => 503,
        }
    }

    /// The anchor that ends the `type` URI.
    pub const fn slug(self) -> &'static str {
        match self {
            Self::InvalidKey => "invalid-key",
            Self::MultipleKeys => "multiple-keys",
            Self::MissingKey => "missing-key",
            Self::MissingScope => "missing-scope",
            Self::BodyUnreadable => "body-unreadable",
            Self::InFlight => "request-in-flight",
            Self::BodyTooLarge => "body-too-large",
            Self::KeyReused => "key-reused",
            Self::HandlerPanicked => "handler-panicked",
            Self::HandlerTimedOut => "handler-timed-out",
            Self::ResponseFailed => "response-failed",
            Self::RequestFailed => "request-failed",
            Self::ResponseNotReplayable => "response-not-replayable",
            Self::StoreUnavailable => "store-unavailable",
        }
    }

    /// The full, stable `type` URI.
    pub fn type_uri(self) -> String {
        format!("{TYPE_BASE}{}", self.slug())
    }

    /// A short summary that does not change from occurrence to occurrence.
    pub const fn title(self) -> &'static str {
        match self {
            Self::InvalidKey => "The idempotency key is invalid",
            Self::MultipleKeys => "More than one idempotency key was sent",
            Self::MissingKey => "This endpoint requires an idempotency key",
            Self::MissingScope => "The header that scopes the idempotency key is missing",
            Self::BodyUnreadable => "The request body could not be read",
            Self::InFlight => "A request with this idempotency key is still being processed",
            Self::BodyTooLarge => "The request body is too large",
            Self::KeyReused => "The idempotency key was already used for a different request",
            Self::HandlerPanicked => "The request failed; it may be retried",
            Self::HandlerTimedOut => "The request took too long and was stopped; it may be retried",
            Self::ResponseFailed => "The response failed while being produced; it may be retried",
            Self::RequestFailed => "The request failed outside its handler",
            Self::ResponseNotReplayable => {
                "The request was processed but its response cannot be replayed"
            }
            Self::StoreUnavailable => "The idempotency store is unavailable",
        }
    }
}

/// A problem details response.
///
/// ```
/// use axum::response::IntoResponse;
/// use idempotent_runtime::problem::{Problem, ProblemKind};
///
/// let response = Problem::new(ProblemKind::MissingKey, "send an `Idempotency-Key` header").into_response();
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// ```
#[derive(Debug, Clone)]
pub struct Problem {
    kind: ProblemKind,
    detail: String,
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `kind` with a human explanation.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header, in whole seconds.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The human explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The JSON body of the problem.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind.type_uri(),
            "title": self.kind.title(),
            "status": self.kind.status(),
            "detail": self.detail,
        })
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
