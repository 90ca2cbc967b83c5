//! The protocol, per request: method, key, namespace, fingerprint, claim, execute, record.
//!
//! `run` is what every `#[idempotent]` handler calls. Each numbered step of the design
//! is one function below:
//!
//! 1. `passes_through`: `GET`, `HEAD`, `OPTIONS` and `TRACE` skip the protocol.
//! 2. `prepare`: the key (400 when invalid, pass-through or 400 when missing), the
//!    buffered body (413 past the limit), the fingerprint and the namespaced store key.
//! 3. `claim`: one store operation; 409 in flight, 422 on a different fingerprint,
//!    replay when completed, 503 when the store fails.
//! 4. `execute`: the handler runs in its own task (a client that disconnects does not
//!    cancel it), the lease is renewed while it runs, then the response is stored under
//!    the claim's fencing token or the claim is released (status not stored, panic).

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, OriginalUri, Request};
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};

use crate::key::{self, KeyError, KeySource};
use crate::policy::StatusPolicy;
use crate::problem::{Problem, ProblemKind};
use crate::response::{Captured, capture};
use crate::store::{Claim, DynStore, FencingToken, Record};
use crate::{Fingerprint, Idempotency, IdempotencyState, StoredResponse};

const TARGET: &str = "idempotent";

/// What is hashed to identify "the same request".
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FingerprintMode {
    /// The body, canonical JSON for JSON bodies, with the fields at these pointers left out.
    Body {
        /// JSON pointers excluded from the hash.
        exclude: &'static [&'static str],
    },
    /// Nothing: every request with the key is "the same".
    None,
}

/// Who the caller is, folded into the stored key.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeSource {
    /// No scope: the key alone (with method and path) identifies the request.
    None,
    /// The SHA-256 of a request header (`Authorization`, `X-Tenant-Id`).
    Header(&'static str),
    /// The `scope` given to [`run`], from an extractor's [`Scope`](crate::Scope).
    Extractor,
}

/// One endpoint's settings, written by the attribute as a `static`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub ttl: Option<Duration>,
    pub lease: Option<Duration>,
    pub key: KeySource,
    pub required: bool,
    pub policy: StatusPolicy,
    pub fingerprint: FingerprintMode,
    pub scope: ScopeSource,
}

impl Endpoint {
    /// What an attribute with no arguments means.
    pub const DEFAULT: Self = Self {
        ttl: None,
        lease: None,
        key: KeySource::Header(key::DEFAULT_HEADER),
        required: false,
        policy: StatusPolicy::DEFAULT,
        fingerprint: FingerprintMode::Body { exclude: &[] },
        scope: ScopeSource::None,
    };
}

/// Extracts the whole router state; its single impl is what lets the compiler infer the
/// router state type of an `#[idempotent]` handler from the router it is added to.
#[doc(hidden)]
pub struct RouterState<S>(pub S);

impl<S: Clone + Send + Sync> FromRequestParts<S> for RouterState<S> {
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        Ok(Self(state.clone()))
    }
}

/// Runs `handler` under the protocol of `endpoint`; `scope` is the caller's identity
/// when the endpoint's scope is [`ScopeSource::Extractor`].
#[doc(hidden)]
pub async fn run<S, H, T>(
    endpoint: &'static Endpoint,
    handler: H,
    request: Request,
    state: S,
    scope: Option<String>,
) -> Response
where
    S: IdempotencyState + Clone + Send + Sync + 'static,
    H: Handler<T, S>,
{
    if passes_through(request.method()) {
        return handler.call(request, state).await;
    }
    let idempotency = state.idempotency();
    let prepared = match prepare(endpoint, &idempotency, request, scope).await {
        Ok(Prepared::Claim(prepared)) => prepared,
        Ok(Prepared::PassThrough(request)) => return handler.call(request, state).await,
        Err(problem) => return problem.into_response(),
    };
    let token = match claim(endpoint, &idempotency, &prepared.key, prepared.fingerprint).await {
        Ok(token) => token,
        Err(response) => return response,
    };
    let run = Execution {
        store: Arc::clone(idempotency.store()),
        key: prepared.key,
        token,
        lease: endpoint.lease.unwrap_or(idempotency.lease()),
        ttl: endpoint.ttl.unwrap_or(idempotency.ttl()),
        policy: endpoint.policy,
        response_limit: idempotency.response_limit(),
        store_timeout: idempotency.store_timeout(),
    };
    let handler = handler.call(prepared.request, state);
    // The handler runs to completion in its own task even if this future is dropped
    // because the client went away: the retry then finds the stored response.
    match tokio::spawn(run.execute(handler)).await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(target: TARGET, error = %err, "idempotent request task failed");
            Problem::new(ProblemKind::HandlerPanicked, "the request task failed").into_response()
        }
    }
}

/// Step 1: safe methods are idempotent already.
pub(crate) fn passes_through(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

pub(crate) struct Claimable {
    pub(crate) request: Request,
    pub(crate) key: String,
    pub(crate) fingerprint: Fingerprint,
}

pub(crate) enum Prepared {
    Claim(Claimable),
    PassThrough(Request),
}

/// Step 2: key, body, fingerprint and store key.
pub(crate) async fn prepare(
    endpoint: &Endpoint,
    idempotency: &Idempotency,
    request: Request,
    scope: Option<String>,
) -> Result<Prepared, Problem> {
    let (parts, body) = request.into_parts();
    let client_key = match endpoint.key {
        KeySource::Header(name) => key::key_from_headers(&parts.headers, name),
        KeySource::Query(name) => key::key_from_query(parts.uri.query(), name),
        KeySource::Json(_) | KeySource::Body => Ok(None),
    }
    .map_err(|err| key_problem(&err, endpoint.key))?;
    let needs_body = matches!(endpoint.key, KeySource::Json(_) | KeySource::Body);
    if client_key.is_none() && !needs_body {
        return missing_key(endpoint, Request::from_parts(parts, body));
    }

    let bytes = read_body(&parts, body, idempotency.body_limit()).await?;
    let body_fingerprint = || Fingerprint::of_request(&parts.headers, &bytes, &[]);
    let fingerprint = match endpoint.fingerprint {
        FingerprintMode::Body { exclude } => {
            Fingerprint::of_request(&parts.headers, &bytes, exclude)
        }
        FingerprintMode::None => Fingerprint::of_bytes(b""),
    };
    let client_key = match (client_key, endpoint.key) {
        (Some(key), _) => key,
        (None, KeySource::Json(pointer)) => match key_from_json(&bytes, pointer)? {
            Some(key) => key,
            None => return missing_key(endpoint, Request::from_parts(parts, Body::from(bytes))),
        },
        // The canonical body hash is the key.
        _ => body_fingerprint().to_string(),
    };

    let scope = match endpoint.scope {
        ScopeSource::None => None,
        ScopeSource::Header(name) => Some(hash_header(&parts, name)),
        ScopeSource::Extractor => scope,
    };
    let path = parts
        .extensions
        .get::<OriginalUri>()
        .map_or_else(|| parts.uri.path(), |uri| uri.path());
    let key = key::namespace(parts.method.as_str(), path, scope.as_deref(), &client_key);
    Ok(Prepared::Claim(Claimable {
        request: Request::from_parts(parts, Body::from(bytes)),
        key,
        fingerprint,
    }))
}

fn missing_key(endpoint: &Endpoint, request: Request) -> Result<Prepared, Problem> {
    if endpoint.required {
        tracing::info!(target: TARGET, source = %endpoint.key, "request rejected: no idempotency key");
        return Err(Problem::new(
            ProblemKind::MissingKey,
            format!(
                "this endpoint requires an idempotency key in {}",
                endpoint.key
            ),
        ));
    }
    Ok(Prepared::PassThrough(request))
}

fn key_problem(err: &KeyError, source: KeySource) -> Problem {
    tracing::info!(target: TARGET, error = %err, "request rejected: invalid idempotency key");
    let kind = match err {
        KeyError::Multiple => ProblemKind::MultipleKeys,
        _ => ProblemKind::InvalidKey,
    };
    Problem::new(kind, format!("{err} (read from {source})"))
}

fn key_from_json(body: &[u8], pointer: &str) -> Result<Option<String>, Problem> {
    let invalid = |detail: String| Problem::new(ProblemKind::InvalidKey, detail);
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        invalid(format!(
            "the idempotency key is read from `{pointer}` of a JSON body, but the body is not JSON"
        ))
    })?;
    match value.pointer(pointer) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => key::parse_key(s.as_bytes())
            .map(Some)
            .map_err(|err| invalid(format!("{err} (read from the body field at `{pointer}`)"))),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(format!(
            "the body field at `{pointer}` must be a string or a number to be used as the idempotency key"
        ))),
    }
}

fn hash_header(parts: &Parts, name: &str) -> String {
    let mut hasher = Sha256::new();
    for value in parts.headers.get_all(name) {
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    Fingerprint::from_bytes(hasher.finalize().into()).to_string()
}

async fn read_body(parts: &Parts, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            ProblemKind::BodyTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => {
            tracing::info!(target: TARGET, error = %err, "request rejected: body unreadable");
            Err(Problem::new(
                ProblemKind::BodyUnreadable,
                format!("the request body could not be read: {err}"),
            ))
        }
    }
}

/// A short, log-safe name for a store key (itself a hash, never the raw key).
fn short(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

/// Step 3: one store operation decides.
async fn claim(
    endpoint: &Endpoint,
    idempotency: &Idempotency,
    key: &str,
    fingerprint: Fingerprint,
) -> Result<FencingToken, Response> {
    let lease = endpoint.lease.unwrap_or(idempotency.lease());
    let outcome = tokio::time::timeout(
        idempotency.store_timeout(),
        idempotency.store().claim(key, fingerprint, lease),
    )
    .await;
    let claim = match outcome {
        Ok(Ok(claim)) => claim,
        Ok(Err(err)) => return Err(store_unavailable(key, &err.to_string())),
        Err(_) => return Err(store_unavailable(key, "the store did not answer in time")),
    };
    match claim {
        Claim::Acquired(token) => {
            tracing::debug!(target: TARGET, key = short(key), token = token.0, "claimed");
            Ok(token)
        }
        Claim::Existing(record) if *record.fingerprint() != fingerprint => {
            tracing::warn!(target: TARGET, key = short(key), "key reused with a different request");
            Err(Problem::new(
                ProblemKind::KeyReused,
                "this idempotency key was already used with a different request body; use a new key for a new request",
            )
            .into_response())
        }
        Claim::Existing(Record::InFlight {
            lease_remaining, ..
        }) => {
            let seconds = lease_remaining.as_secs_f64().ceil().max(1.0) as u64;
            tracing::info!(target: TARGET, key = short(key), retry_after = seconds, "conflict: request in flight");
            Err(Problem::new(
                ProblemKind::InFlight,
                format!("a request with this idempotency key is being processed; retry in {seconds} s to get its response"),
            )
            .with_retry_after(seconds)
            .into_response())
        }
        Claim::Existing(Record::Completed { response, .. }) => {
            tracing::debug!(target: TARGET, key = short(key), status = response.status().as_u16(), "replayed");
            Err(response.replay())
        }
    }
}

fn store_unavailable(key: &str, error: &str) -> Response {
    tracing::error!(target: TARGET, key = short(key), error, "idempotency store unavailable; handler not run");
    Problem::new(
        ProblemKind::StoreUnavailable,
        "the idempotency store could not be reached, so the request was not processed; retry later",
    )
    .with_retry_after(1)
    .into_response()
}

/// Step 4: everything that happens once the claim is ours.
pub(crate) struct Execution {
    pub(crate) store: Arc<dyn DynStore>,
    pub(crate) key: String,
    pub(crate) token: FencingToken,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) policy: StatusPolicy,
    pub(crate) response_limit: usize,
    pub(crate) store_timeout: Duration,
}

impl Execution {
    pub(crate) async fn execute<F>(self, handler: F) -> Response
    where
        F: Future<Output = Response> + Send,
    {
        let mut handler = std::pin::pin!(AssertUnwindSafe(handler).catch_unwind());
        let outcome = tokio::select! {
            outcome = &mut handler => outcome,
            () = self.renew_while_running() => handler.await,
        };
        let response = match outcome {
            Ok(response) => response,
            Err(_panic) => {
                tracing::error!(target: TARGET, key = short(&self.key), "handler panicked; claim released");
                self.release().await;
                return Problem::new(
                    ProblemKind::HandlerPanicked,
                    "the handler failed before answering; the idempotency key was released, so the request can be retried",
                )
                .into_response();
            }
        };
        if !self.policy.stores(response.status().as_u16()) {
            self.release().await;
            return response;
        }
        match capture(response, self.response_limit).await {
            Captured::Complete(stored, response) => {
                self.complete(&stored).await;
                response
            }
            Captured::TooLarge(response) => {
                tracing::warn!(target: TARGET, key = short(&self.key), limit = self.response_limit, "response too large to store; retries will get a problem");
                let problem = Problem::new(
                    ProblemKind::ResponseNotReplayable,
                    format!(
                        "the request was processed, but its response was larger than {} bytes and was not kept; do not retry it",
                        self.response_limit
                    ),
                );
                self.complete(&problem.to_stored()).await;
                response
            }
            Captured::Failed(err) => {
                tracing::error!(target: TARGET, key = short(&self.key), error = %err, "response body failed; claim released");
                self.release().await;
                Problem::new(
                    ProblemKind::HandlerPanicked,
                    "the response body failed while being produced; the request can be retried",
                )
                .into_response()
            }
        }
    }

    /// Keeps the lease alive; returns only if the lease is lost.
    async fn renew_while_running(&self) {
        let every = (self.lease / 3).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(every).await;
            let renewed = tokio::time::timeout(
                self.store_timeout.min(every),
                self.store.renew(&self.key, self.token, self.lease),
            )
            .await;
            match renewed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::warn!(target: TARGET, key = short(&self.key), "lease lost while the handler runs; its response will not be stored");
                    return;
                }
                Ok(Err(err)) => {
                    tracing::warn!(target: TARGET, key = short(&self.key), error = %err, "lease renewal failed; will retry");
                }
                Err(_) => {
                    tracing::warn!(target: TARGET, key = short(&self.key), "lease renewal timed out; will retry");
                }
            }
        }
    }

    async fn complete(&self, stored: &StoredResponse) {
        let outcome = tokio::time::timeout(
            self.store_timeout,
            self.store.complete(&self.key, self.token, stored, self.ttl),
        )
        .await;
        match outcome {
            Ok(Ok(true)) => {
                tracing::debug!(target: TARGET, key = short(&self.key), status = stored.status().as_u16(), "completed");
            }
            Ok(Ok(false)) => {
                tracing::warn!(target: TARGET, key = short(&self.key), "response not stored: the claim was taken over after its lease lapsed");
            }
            Ok(Err(err)) => {
                tracing::error!(target: TARGET, key = short(&self.key), error = %err, "response not stored: store error; the key frees up when the lease lapses");
            }
            Err(_) => {
                tracing::error!(target: TARGET, key = short(&self.key), "response not stored: store timed out; the key frees up when the lease lapses");
            }
        }
    }

    async fn release(&self) {
        let outcome = tokio::time::timeout(
            self.store_timeout,
            self.store.release(&self.key, self.token),
        )
        .await;
        match outcome {
            Ok(Ok(_)) => tracing::debug!(target: TARGET, key = short(&self.key), "released"),
            Ok(Err(err)) => {
                tracing::error!(target: TARGET, key = short(&self.key), error = %err, "release failed; the key frees up when the lease lapses");
            }
            Err(_) => {
                tracing::error!(target: TARGET, key = short(&self.key), "release timed out; the key frees up when the lease lapses");
            }
        }
    }
}

impl Problem {
    /// The problem as a stored response, replayed to every retry.
    pub(crate) fn to_stored(&self) -> StoredResponse {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let status = StatusCode::from_u16(self.kind().status()).unwrap_or(StatusCode::CONFLICT);
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        StoredResponse::new(status, headers, body.into())
    }
}
