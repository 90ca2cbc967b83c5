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
//! 4. `execute`: the lease is renewed while the handler runs, then the response is
//!    stored under the claim's fencing token or the claim is released (status not
//!    stored, panic).
//!
//! Steps 2 to 4 run in a task of the request's own (`task`), so that a client that
//! disconnects cancels neither a claim nor the handler it protects. `drive` polls it in
//! the request's future and spawns it (`Detached`) only if that future is dropped before
//! the task ends, or if the task answered before it ended (a late claim to take back).

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
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
use tokio::sync::oneshot;

use crate::fingerprint;
use crate::key::{self, KeyError, KeySource};
use crate::policy::StatusPolicy;
use crate::problem::{Problem, ProblemKind};
use crate::response::{Captured, Chunks, capture};
use crate::store::{BoxFuture, Claim, FencingToken, Record, StoreError};
use crate::{Fingerprint, Idempotency, IdempotencyState, StoredResponse};

pub(crate) const TARGET: &str = "idempotent";

/// `Retry-After` of a `409`, in seconds. The lease left says nothing of when the first
/// request will answer: its owner renews it, so it stays near the whole lease (60 s by
/// default) while a handler of a few milliseconds finishes. A client that honours the
/// header comes back in a second, and backs off from there if it is still running.
const IN_FLIGHT_RETRY_AFTER: u64 = 1;

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
///
/// Not an `async fn`: the request and the task are built when it is called, so that the
/// future it returns holds a pointer to the task rather than the request and every step's
/// state. axum boxes that future (with the handler's wrapper around it) for every
/// request, and a small box is much cheaper to allocate and to move than a large one.
/// Nothing runs until that future is first polled: dropped before, it drops the task
/// unstarted, with nothing read or claimed.
#[doc(hidden)]
pub fn run<S, H, T>(
    endpoint: &'static Endpoint,
    handler: H,
    request: Request,
    state: S,
    scope: Option<String>,
) -> impl Future<Output = Response> + Send
where
    S: IdempotencyState + Clone + Send + Sync + 'static,
    H: Handler<T, S>,
{
    let start = if passes_through(request.method()) {
        Start::Handler(handler.call(request, state))
    } else {
        let (task, answer) = task(endpoint, handler, request, state, scope);
        Start::Task(task, answer)
    };
    async move {
        let (task, answer) = match start {
            Start::Handler(handler) => return handler.await,
            Start::Task(task, answer) => (task, answer),
        };
        match drive(task, answer).await {
            Ok(Answer::Response(response)) => response,
            Ok(Answer::PassThrough(request, handler, state)) => handler.call(request, state).await,
            Err(_) => {
                tracing::error!(target: TARGET, "idempotent request task ended without an answer");
                Problem::new(
                    ProblemKind::RequestFailed,
                    "the request failed outside its handler; whether the handler ran is not known, and the idempotency key may stay claimed until its lease lapses",
                )
                .into_response()
            }
        }
    }
}

/// How a request starts: the handler, for a method the protocol skips, or the task.
enum Start<F, H, S> {
    Handler(F),
    Task(Task, oneshot::Receiver<Answer<H, S>>),
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the request task hands back to the request.
enum Answer<H, S> {
    /// The response.
    Response(Response),
    /// A request the protocol does not apply to, to run as it is.
    PassThrough(Request, H, S),
}

/// The request's task, and where it answers.
///
/// Everything from the body on runs in it, so that a client that goes away cancels
/// neither a claim the store has already granted (the key would stay in flight until its
/// lease lapsed) nor the handler it protects: the retry then finds the stored response
/// instead of running the handler again. Until the claim, giving up the request still
/// ends the task. It answers through a channel, so it can answer first and tidy up after
/// (see `claim`).
fn task<S, H, T>(
    endpoint: &'static Endpoint,
    handler: H,
    request: Request,
    state: S,
    scope: Option<String>,
) -> (Task, oneshot::Receiver<Answer<H, S>>)
where
    S: IdempotencyState + Clone + Send + Sync + 'static,
    H: Handler<T, S>,
{
    let (mut reply, answer) = oneshot::channel();
    // The task is allocated for every request, and it stays under about 1 KB, the most
    // that glibc serves from the thread's own cache: past that, each request's task came
    // from the shared bins. So the request is boxed (an async block keeps room for what
    // it captured, and would lay the request out twice, captured and claimed), and so
    // are the execution and the rare late release: a request that is answered from the
    // store takes no room for them.
    let request = Box::new(request);
    let task = Box::pin(async move {
        // Everything up to the claim in a block of its own: what it leaves behind (the
        // request, the key) is then not laid out beside the execution's state.
        let (run, handler, _working) = {
            let idempotency = state.idempotency();
            // Held until the task ends, for `Idempotency::drain`.
            let working = idempotency.working();
            // Matched where it is awaited, with no binding of its own.
            let Claimable {
                request,
                key,
                fingerprint,
            } = match tokio::select! {
                biased;
                prepared = prepare(endpoint, &idempotency, request, scope) => prepared,
                // The request was given up (the client went away, a timeout layer dropped
                // it) while its body was still arriving: nothing is claimed yet, so stop
                // reading it, as the request's own future would have.
                () = reply.closed() => return,
            } {
                Ok(Prepared::Claim(claimable)) => claimable,
                // Handed back: a request without a key runs in the caller's task, as it
                // would without the attribute.
                Ok(Prepared::PassThrough(request)) => {
                    let _ = reply.send(Answer::PassThrough(*request, handler, state));
                    return;
                }
                Err(problem) => {
                    let _ = reply.send(Answer::Response(problem.into_response()));
                    return;
                }
            };
            let lease = endpoint.lease.unwrap_or(idempotency.lease());
            let token = match claim(&idempotency, &key, fingerprint, lease).await {
                Claimed::Owned(token) => token,
                Claimed::Answered(response) => {
                    let _ = reply.send(Answer::Response(response));
                    return;
                }
                Claimed::Late(response, pending) => {
                    // Answered first: the client does not wait for the tidying up.
                    let _ = reply.send(Answer::Response(response));
                    Box::pin(release_late(&idempotency, &key, lease, pending, lease)).await;
                    return;
                }
            };
            let run = Execution {
                lease,
                ttl: endpoint.ttl.unwrap_or(idempotency.ttl()),
                idempotency,
                key,
                token,
                policy: endpoint.policy,
            };
            // Not boxed again: an axum handler's future is a box already.
            (run, handler.call(*request, state), working)
        };
        // The client may be gone; the work is done either way.
        let _ = reply.send(Answer::Response(Box::pin(run.execute(handler)).await));
    });
    (task, answer)
}

/// Runs `task` to completion whatever happens to the caller, and returns its answer.
///
/// The task runs here, in the caller's own task, for as long as the caller waits for
/// the answer: the handler keeps the request's tracing span and tokio task-locals, and
/// a store's reply wakes the request directly, with no task of its own to switch to.
/// Should the caller be dropped first (the client went away, a timeout layer gave up),
/// the rest of the task is spawned, under the tracing span current then, so that a
/// request is never cancelled between its claim and its record. So is the rest of a
/// task that answered before it was done (`release_late`). A panic in the task (never
/// the handler's, which `execute` catches) ends it without an answer, as it would end
/// a spawned task.
async fn drive<H, S>(
    task: Task,
    mut answer: oneshot::Receiver<Answer<H, S>>,
) -> Result<Answer<H, S>, oneshot::error::RecvError> {
    let mut task = Detached(Some(task));
    std::future::poll_fn(|cx| {
        if let Some(running) = &mut task.0 {
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(cx)));
            if !matches!(polled, Ok(Poll::Pending)) {
                task.0 = None;
            }
        }
        // Ready at the latest when the task ends, which sends or drops the sender.
        let answered = Pin::new(&mut answer).poll(cx);
        if answered.is_ready() {
            task.spawn();
        }
        answered
    })
    .await
}

/// A request's task, spawned if it is dropped unfinished.
struct Detached(Option<Task>);

impl Detached {
    fn spawn(&mut self) {
        let Some(task) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(tracing::Instrument::in_current_span(task));
            }
            Err(_) => tracing::error!(
                target: TARGET,
                "an idempotent request was dropped outside a tokio runtime before its task ended; the task is dropped with it"
            ),
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.spawn();
    }
}

/// `future`, given up after `limit`. A future that is ready on its first poll (every
/// operation of the memory store) arms no timer: creating and dropping one takes the
/// timer driver's lock, a cost that showed on every request.
pub(crate) async fn within<F: Future>(
    limit: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut future = std::pin::pin!(future);
    match poll_once(future.as_mut()).await {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => tokio::time::timeout(limit, future).await,
    }
}

/// Polls `future` once, in the caller's task.
async fn poll_once<F: Future + ?Sized>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// Step 1: safe methods are idempotent already.
pub(crate) fn passes_through(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

pub(crate) struct Claimable {
    pub(crate) request: Box<Request>,
    pub(crate) key: String,
    pub(crate) fingerprint: Fingerprint,
}

pub(crate) enum Prepared {
    Claim(Claimable),
    PassThrough(Box<Request>),
}

/// Step 2: key, body, fingerprint and store key.
pub(crate) async fn prepare(
    endpoint: &Endpoint,
    idempotency: &Idempotency,
    mut request: Box<Request>,
    scope: Option<String>,
) -> Result<Prepared, Problem> {
    // Taken apart and put back in the same box.
    let (parts, body) = std::mem::take(&mut *request).into_parts();
    let client_key = match endpoint.key {
        KeySource::Header(name) => key::key_in_headers(&parts.headers, name),
        KeySource::Query(name) => {
            key::key_from_query(parts.uri.query(), name).map(|key| key.map(Cow::Owned))
        }
        KeySource::Json(_) | KeySource::Body => Ok(None),
    }
    .map_err(|err| key_problem(&err, endpoint.key))?;
    let needs_body = matches!(endpoint.key, KeySource::Json(_) | KeySource::Body);
    if client_key.is_none() && !needs_body {
        *request = Request::from_parts(parts, body);
        return missing_key(endpoint, request);
    }

    let bytes = read_body(&parts, body, idempotency.body_limit()).await?;
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(&parts.uri, |uri| &uri.0);
    // The request as the fingerprint sees it: the body (canonical JSON, the excluded
    // fields left out) and the query string, all but the key when it is read there.
    let hashed = || {
        let exclude = match endpoint.fingerprint {
            FingerprintMode::Body { exclude } => exclude,
            FingerprintMode::None => &[],
        };
        let body = Fingerprint::of_request(&parts.headers, &bytes, exclude);
        let key_parameter = match endpoint.key {
            KeySource::Query(name) => Some(name),
            _ => None,
        };
        with_query(body, uri.query(), key_parameter)
    };
    let fingerprint = match endpoint.fingerprint {
        FingerprintMode::Body { .. } => hashed(),
        FingerprintMode::None => Fingerprint::of_bytes(b""),
    };
    let client_key = match (client_key, endpoint.key) {
        (Some(key), _) => key,
        (None, KeySource::Json(pointer)) => match key_from_json(&bytes, pointer)? {
            Some(key) => Cow::Owned(key),
            None => {
                *request = Request::from_parts(parts, Body::from(bytes));
                return missing_key(endpoint, request);
            }
        },
        // The request's hash is the key.
        _ => Cow::Owned(
            match endpoint.fingerprint {
                FingerprintMode::Body { .. } => fingerprint,
                FingerprintMode::None => hashed(),
            }
            .to_string(),
        ),
    };

    let scope = match endpoint.scope {
        ScopeSource::None => None,
        ScopeSource::Header(name) => {
            Some(hash_header(&parts, name).ok_or_else(|| missing_scope(name))?)
        }
        ScopeSource::Extractor => scope,
    };
    let key = key::namespace(
        parts.method.as_str(),
        &key::normalize_path(uri.path()),
        scope.as_deref(),
        &client_key,
    );
    *request = Request::from_parts(parts, Body::from(bytes));
    Ok(Prepared::Claim(Claimable {
        request,
        key,
        fingerprint,
    }))
}

/// `body` with the query string folded in: its parameters percent-decoded and sorted by
/// name (values of one name keep their order), `key_parameter` left out. A request
/// without query parameters keeps the body's fingerprint as it is.
fn with_query(body: Fingerprint, query: Option<&str>, key_parameter: Option<&str>) -> Fingerprint {
    let mut parameters: Vec<(Vec<u8>, Vec<u8>)> = key::query_parameters(query.unwrap_or(""))
        .filter(|(name, _)| key_parameter.is_none_or(|key| name.as_slice() != key.as_bytes()))
        .collect();
    if parameters.is_empty() {
        return body;
    }
    let mut hasher = Sha256::new();
    hasher.update(b"query\0");
    fingerprint::hash_parameters(&mut hasher, &mut parameters);
    hasher.update(body.as_bytes());
    Fingerprint::from_bytes(hasher.finalize().into())
}

fn missing_key(endpoint: &Endpoint, request: Box<Request>) -> Result<Prepared, Problem> {
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
    // A base64 key sent unencoded in a query string: its `+` reads as a space.
    let hint = match (err, source) {
        (KeyError::InvalidByte { byte: b' ', .. }, KeySource::Query(_)) => {
            "; a `+` in a query string means a space: send it as `%2B`"
        }
        _ => "",
    };
    Problem::new(kind, format!("{err} (read from {source}){hint}"))
}

fn key_from_json(body: &[u8], pointer: &'static str) -> Result<Option<String>, Problem> {
    // No body (a webhook's empty ping, an `Option<Json<_>>` handler) holds no key.
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    let invalid = |detail: String| {
        tracing::info!(target: TARGET, error = %detail, "request rejected: invalid idempotency key");
        Problem::new(ProblemKind::InvalidKey, detail)
    };
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        invalid(format!(
            "the idempotency key is read from `{pointer}` of a JSON body, but the body is not JSON"
        ))
    })?;
    // Taken as it is: a JSON string is not a header's quoted string, and its quotes, if
    // it has any, are part of the key.
    let checked = |key: String| match key::validate(key.as_bytes()) {
        Ok(()) => Ok(Some(key)),
        Err(err) => Err(key_problem(&err, KeySource::Json(pointer))),
    };
    match value.pointer_mut(pointer).map(serde_json::Value::take) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => checked(s),
        // Only an integer is kept exactly: `100000000000000000001` and `...002` would both
        // be read as the float 1e20, two events sharing one key. (With serde_json's
        // `arbitrary_precision`, which any crate in the build can turn on, such numbers
        // would keep their digits; refused all the same, so that a key does not depend on
        // the build.)
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => checked(n.to_string()),
        Some(serde_json::Value::Number(_)) => Err(invalid(format!(
            "the body field at `{pointer}` is a number that is not a 64-bit integer, which is not kept exactly; send the idempotency key as a string"
        ))),
        Some(_) => Err(invalid(format!(
            "the body field at `{pointer}` must be a string or an integer to be used as the idempotency key"
        ))),
    }
}

/// The scope from header `name`: the hash of its values, or `None` without any.
fn hash_header(parts: &Parts, name: &str) -> Option<String> {
    let mut values = parts.headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut hasher = Sha256::new();
    for value in values {
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    Some(Fingerprint::from_bytes(hasher.finalize().into()).to_string())
}

/// A keyed request without the header that scopes its key. Letting it through with an
/// empty scope would put every such caller in one scope, where they could be answered
/// each other's responses.
fn missing_scope(name: &str) -> Problem {
    tracing::info!(target: TARGET, header = name, "request rejected: no scope header");
    Problem::new(
        ProblemKind::MissingScope,
        format!(
            "this endpoint keeps idempotency keys apart by the `{name}` header, and the request has none; send it with every request that has an idempotency key"
        ),
    )
}

async fn read_body(parts: &Parts, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        tracing::info!(target: TARGET, limit, "request rejected: body too large");
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
    // Read frame by frame rather than through `collect`, whose list of chunks costs an
    // allocation even for the usual body of one chunk.
    let mut body = Limited::new(body, limit);
    let mut chunks = Chunks::default();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
            Err(err) if over_a_limit(&*err) => return Err(too_large()),
            Err(err) => {
                tracing::info!(target: TARGET, error = %err, "request rejected: body unreadable");
                return Err(Problem::new(
                    ProblemKind::BodyUnreadable,
                    format!("the request body could not be read: {err}"),
                ));
            }
        };
        chunks.push(data);
    }
    Ok(chunks.into_bytes())
}

/// A short, log-safe name for a store key (itself a hash, never the raw key).
pub(crate) fn short(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

/// What the claim decided.
enum Claimed<'a> {
    /// The key is ours.
    Owned(FencingToken),
    /// The request is answered without running the handler: replay, 409, 422, 503.
    Answered(Response),
    /// The store did not answer in time: `503` now, and the late claim to release.
    Late(Response, BoxFuture<'a, Result<Claim, StoreError>>),
}

/// Awaits a late claim for up to `wait` more and releases it if it was granted.
pub(crate) async fn release_late(
    idempotency: &Idempotency,
    key: &str,
    lease: Duration,
    pending: BoxFuture<'_, Result<Claim, StoreError>>,
    wait: Duration,
) {
    if let Ok(Ok(Claim::Acquired(token))) = tokio::time::timeout(wait, pending).await {
        tracing::warn!(target: TARGET, key = short(key), "a claim granted too late is released");
        release(idempotency, key, token, lease).await;
    }
}

/// Step 3: one store operation decides, bounded by the store timeout.
async fn claim<'a>(
    idempotency: &'a Idempotency,
    key: &'a str,
    fingerprint: Fingerprint,
    lease: Duration,
) -> Claimed<'a> {
    let mut pending = idempotency.store().claim(key, fingerprint, lease);
    let claim = match within(idempotency.store_timeout(), &mut pending).await {
        Ok(Ok(claim)) => claim,
        Ok(Err(err)) => {
            return Claimed::Answered(store_unavailable(key, &err.to_string()));
        }
        // The claim may still be granted, and a granted claim nobody owns would hold the
        // key until its lease lapsed: it goes to `release_late`.
        Err(_) => {
            let answer = store_unavailable(key, "the store did not answer in time");
            return Claimed::Late(answer, pending);
        }
    };
    let answer = match claim {
        Claim::Acquired(token) => {
            tracing::debug!(target: TARGET, key = short(key), token = token.0, "claimed");
            return Claimed::Owned(token);
        }
        Claim::Existing(record) if *record.fingerprint() != fingerprint => {
            tracing::warn!(target: TARGET, key = short(key), "key reused with a different request");
            Problem::new(
                ProblemKind::KeyReused,
                "this idempotency key was already used with a different request (body or query string); use a new key for a new request",
            )
            .into_response()
        }
        Claim::Existing(Record::InFlight {
            lease_remaining, ..
        }) => {
            tracing::debug!(target: TARGET, key = short(key), lease_remaining = ?lease_remaining, "conflict: request in flight");
            Problem::new(
                ProblemKind::InFlight,
                "a request with this idempotency key is being processed; retry with the same key to get its response",
            )
            .with_retry_after(IN_FLIGHT_RETRY_AFTER)
            .into_response()
        }
        Claim::Existing(Record::Completed { response, .. }) => {
            tracing::debug!(target: TARGET, key = short(key), status = response.status().as_u16(), "replayed");
            response.replay()
        }
    };
    Claimed::Answered(answer)
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

/// Whether a body error is a length limit: this one's, or one that a layer in front set
/// (tower-http's `RequestBodyLimit`), which reaches here wrapped in an `axum::Error`.
fn over_a_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| err.is::<LengthLimitError>())
}

/// Step 4: everything that happens once the claim is ours.
#[derive(Clone)]
pub(crate) struct Execution {
    /// The store and the app-wide settings (limits, timeouts, stored headers).
    pub(crate) idempotency: Idempotency,
    pub(crate) key: String,
    pub(crate) token: FencingToken,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) policy: StatusPolicy,
}

impl Execution {
    pub(crate) async fn execute<F>(&self, handler: F) -> Response
    where
        F: Future<Output = Response> + Send,
    {
        // The response body is read under the same guard as the handler: a body streamed
        // for longer than the lease keeps the lease, and one that panics releases the
        // claim, as a panicking handler does. In a block of its own, which keeps only the
        // response and the record: the store's step after it is laid out beside nothing
        // else, and every first execution's future stays small enough for the
        // allocator's per-thread cache.
        let (response, stored) = {
            let work = std::pin::pin!(async {
                // The response is moved into the capture: in a block, it takes no room
                // of its own beside it.
                let capturing = {
                    let response = handler.await;
                    if !self.policy.stores(response.status().as_u16()) {
                        return Err(response);
                    }
                    capture(
                        response,
                        self.idempotency.response_limit(),
                        self.idempotency.stored_headers(),
                    )
                };
                Ok(capturing.await)
            });
            self.ending(self.guard(work).await)
        };
        match &stored {
            Some(stored) => self.complete(stored).await,
            None => self.release().await,
        }
        response
    }

    /// What the guarded work comes to: the response for the caller, and the record to
    /// store, or `None` to release the claim.
    fn ending(
        &self,
        outcome: Guarded<Result<Captured, Response>>,
    ) -> (Response, Option<StoredResponse>) {
        let captured = match outcome {
            Guarded::Done(Ok(captured)) => captured,
            Guarded::Done(Err(not_stored)) => return (not_stored, None),
            Guarded::PastLimit => {
                let limit = self.idempotency.execution_limit().unwrap_or_default();
                tracing::error!(target: TARGET, key = short(&self.key), ?limit, "handler ran past the execution limit; stopped and claim released");
                let problem = Problem::new(
                    ProblemKind::HandlerTimedOut,
                    format!(
                        "the handler did not answer within {limit:?} and was stopped; the idempotency key was released, so the request can be retried"
                    ),
                );
                return (problem.into_response(), None);
            }
            Guarded::Panicked(_panic) => {
                tracing::error!(target: TARGET, key = short(&self.key), "handler panicked; claim released");
                let problem = Problem::new(
                    ProblemKind::HandlerPanicked,
                    "the handler failed before answering; the idempotency key was released, so the request can be retried",
                );
                return (problem.into_response(), None);
            }
        };
        match captured {
            Captured::Complete(stored, response) => (response, Some(stored)),
            Captured::TooLarge(response) => {
                tracing::warn!(target: TARGET, key = short(&self.key), limit = self.idempotency.response_limit(), "response too large to store; retries will get a problem");
                let problem = Problem::new(
                    ProblemKind::ResponseNotReplayable,
                    format!(
                        "the request was processed, but its response was larger than {} bytes and was not kept; do not retry it",
                        self.idempotency.response_limit()
                    ),
                );
                (response, Some(problem.to_stored()))
            }
            Captured::Failed(err) => {
                tracing::error!(target: TARGET, key = short(&self.key), error = %err, "response body failed; claim released");
                let problem = Problem::new(
                    ProblemKind::ResponseFailed,
                    "the response body failed while being produced; the idempotency key was released, so the request can be retried",
                );
                (problem.into_response(), None)
            }
        }
    }

    /// Runs `work` while renewing the lease, catching a panic. The work is pinned by the
    /// caller: this future then holds a pointer to it, where it would otherwise hold two
    /// copies (the argument and the pinned one).
    pub(crate) async fn guard<F: Future>(&self, work: Pin<&mut F>) -> Guarded<F::Output> {
        let mut work = AssertUnwindSafe(work).catch_unwind();
        // The work first: one that is done on its first poll (a handler that awaits
        // nothing) needs no renewals. Their timers take room only in the box made for
        // work that waits, so that every execution's future stays small enough for the
        // allocator's per-thread cache.
        if let Poll::Ready(outcome) = poll_once(Pin::new(&mut work)).await {
            return Guarded::of(outcome);
        }
        match Box::pin(self.renewing(&mut work)).await {
            Some(outcome) => Guarded::of(outcome),
            None => Guarded::PastLimit,
        }
    }

    /// Runs `work` to its end while renewing the lease; `None` once it runs past the
    /// execution limit (the caller drops it). The caller has just polled the work, which
    /// is waiting: it is polled again when it wakes the task, not right away.
    async fn renewing<F: Future + Unpin>(&self, work: &mut F) -> Option<F::Output> {
        let mut renewals = std::pin::pin!(self.renew_while_running());
        let mut just_polled = true;
        let stopped = std::future::poll_fn(|cx| {
            if !std::mem::take(&mut just_polled)
                && let Poll::Ready(outcome) = Pin::new(&mut *work).poll(cx)
            {
                return Poll::Ready(Ok(outcome));
            }
            renewals.as_mut().poll(cx).map(Err)
        })
        .await;
        match stopped {
            Ok(outcome) => Some(outcome),
            // Its response will not be stored, but the work goes on, as far as the
            // limit: its side effects may be under way.
            Err(Stopped::LeaseLost(None)) => Some(work.await),
            Err(Stopped::LeaseLost(Some(limit))) => tokio::time::timeout_at(limit, work).await.ok(),
            Err(Stopped::PastLimit) => None,
        }
    }

    /// Keeps the lease alive; returns if the lease is lost or the work runs past the
    /// execution limit. A renewal that fails is tried again soon, not a period later:
    /// the third attempt would race the lease.
    async fn renew_while_running(&self) -> Stopped {
        let every = (self.lease / 3).max(Duration::from_millis(1));
        let again = (every / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
        // At most 100 years (`with_execution_limit`): no overflow.
        let now = tokio::time::Instant::now();
        let limit = self.idempotency.execution_limit().map(|limit| now + limit);
        let past_limit = || limit.is_some_and(|limit| tokio::time::Instant::now() >= limit);
        let mut wait = every;
        loop {
            match limit {
                Some(limit)
                    if limit.saturating_duration_since(tokio::time::Instant::now()) <= wait =>
                {
                    tokio::time::sleep_until(limit).await;
                    return Stopped::PastLimit;
                }
                _ => tokio::time::sleep(wait).await,
            }
            wait = again;
            let renewal = self
                .idempotency
                .store()
                .renew(&self.key, self.token, self.lease);
            let patience = self.idempotency.store_timeout().min(every);
            // The limit cuts a renewal short too.
            let renewed = match limit {
                Some(limit) => {
                    let until = tokio::time::Instant::now()
                        .checked_add(patience)
                        .map_or(limit, |until| until.min(limit));
                    tokio::time::timeout_at(until, renewal).await
                }
                None => tokio::time::timeout(patience, renewal).await,
            };
            if renewed.is_err() && past_limit() {
                return Stopped::PastLimit;
            }
            match renewed {
                Ok(Ok(true)) => wait = every,
                Ok(Ok(false)) => {
                    tracing::warn!(target: TARGET, key = short(&self.key), "lease lost while the handler runs; its response will not be stored");
                    return Stopped::LeaseLost(limit);
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

    pub(crate) async fn complete(&self, stored: &StoredResponse) {
        let store = self.idempotency.store();
        let completed = settle(&self.idempotency, &self.key, "complete", self.lease, || {
            store.complete(&self.key, self.token, stored, self.ttl)
        })
        .await;
        match completed {
            Some((true, _)) => {
                tracing::debug!(target: TARGET, key = short(&self.key), status = stored.status().as_u16(), "completed");
            }
            Some((false, 1)) => {
                tracing::warn!(target: TARGET, key = short(&self.key), "response not stored: the claim was taken over after its lease lapsed");
            }
            // The store may have applied an attempt whose answer did not arrive in time.
            Some((false, _)) => {
                tracing::warn!(target: TARGET, key = short(&self.key), "completion refused after a failed attempt: that attempt stored the response, or the claim was taken over after its lease lapsed");
            }
            None => {
                tracing::error!(target: TARGET, key = short(&self.key), "response not stored yet: the store is unavailable; trying again in the background for up to a lease");
                self.complete_later(stored.clone());
            }
        }
    }

    /// Goes on trying a completion that `settle` gave up on, in a task of its own, so
    /// that the response is not held back meanwhile. If the store comes back while the
    /// claim is still this request's, the record is kept after all and a retry gets the
    /// replay instead of running the handler a second time: within the lease for the
    /// memory and Redis stores, and even after it for Postgres, as long as nobody has
    /// claimed the key again. Tried for up to one lease more, and counted as work under
    /// way, so that [`Idempotency::drain`] waits for it; once the drain has begun, the
    /// next attempt is the last, so that a store that went away with the app does not
    /// hold its shutdown for a lease.
    fn complete_later(&self, stored: StoredResponse) {
        let idempotency = self.idempotency.clone();
        let (key, token, ttl) = (self.key.clone(), self.token, self.ttl);
        let until = tokio::time::Instant::now().checked_add(self.lease);
        let later = async move {
            let mut backoff = LATER_FIRST_BACKOFF;
            loop {
                // The last attempt is at the end of the window, however the backoff falls.
                let next = tokio::time::Instant::now() + backoff;
                let (wake, last) = match until {
                    Some(until) if next >= until => (until, true),
                    _ => (next, false),
                };
                tokio::time::sleep_until(wake).await;
                let last = last || idempotency.draining();
                let completion = idempotency.store().complete(&key, token, &stored, ttl);
                match within(idempotency.store_timeout(), completion).await {
                    Ok(Ok(true)) => {
                        tracing::warn!(target: TARGET, key = short(&key), status = stored.status().as_u16(), "completed late, once the store answered again");
                        return;
                    }
                    Ok(Ok(false)) => {
                        tracing::warn!(target: TARGET, key = short(&key), "late completion refused: an earlier attempt stored the response, or the lease lapsed and the claim is gone");
                        return;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(target: TARGET, key = short(&key), error = %err, "late completion failed; will retry");
                    }
                    Err(_) => {
                        tracing::debug!(target: TARGET, key = short(&key), "late completion timed out; will retry");
                    }
                }
                if last {
                    break;
                }
                backoff = (backoff * 2).min(LATER_MAX_BACKOFF);
            }
            tracing::error!(target: TARGET, key = short(&key), "response not stored: the store stayed unavailable for a lease after the handler answered, or until the app was drained; a retry runs the handler again");
        };
        if !spawn_counted(&self.idempotency, later) {
            tracing::error!(target: TARGET, key = short(&self.key), "response not stored: no tokio runtime to try again in; the key frees up when the lease lapses");
        }
    }

    pub(crate) async fn release(&self) {
        release(&self.idempotency, &self.key, self.token, self.lease).await;
    }
}

/// Spawns `work` under the current tracing span, counted as work under way for
/// [`Idempotency::drain`]; `false` when there is no tokio runtime to spawn it on.
pub(crate) fn spawn_counted(
    idempotency: &Idempotency,
    work: impl Future<Output = ()> + Send + 'static,
) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let working = idempotency.working();
    let work = async move {
        let _working = working;
        work.await;
    };
    runtime.spawn(tracing::Instrument::in_current_span(work));
    true
}

/// What [`Execution::guard`] made of its work.
pub(crate) enum Guarded<T> {
    /// It finished.
    Done(T),
    /// It panicked.
    Panicked(Box<dyn std::any::Any + Send>),
    /// It ran past the execution limit; the caller drops it.
    PastLimit,
}

impl<T> Guarded<T> {
    fn of(outcome: std::thread::Result<T>) -> Self {
        match outcome {
            Ok(output) => Self::Done(output),
            Err(panic) => Self::Panicked(panic),
        }
    }
}

/// Why the renewals stopped.
enum Stopped {
    /// The lease was lost; the execution limit, if any, still holds.
    LeaseLost(Option<tokio::time::Instant>),
    PastLimit,
}

/// Releases a claim so that a retry runs again.
pub(crate) async fn release(
    idempotency: &Idempotency,
    key: &str,
    token: FencingToken,
    lease: Duration,
) {
    let store = idempotency.store();
    match settle(idempotency, key, "release", lease, || {
        store.release(key, token)
    })
    .await
    {
        Some((true, _)) => tracing::debug!(target: TARGET, key = short(key), "released"),
        Some((false, 1)) => {
            tracing::debug!(target: TARGET, key = short(key), "nothing to release: the claim was taken over after its lease lapsed");
        }
        // The store may have applied an attempt whose answer did not arrive in time.
        Some((false, _)) => {
            tracing::debug!(target: TARGET, key = short(key), "release refused after a failed attempt: that attempt released the claim, or it was taken over after its lease lapsed");
        }
        None => {
            tracing::error!(target: TARGET, key = short(key), "release failed; the key frees up when the lease lapses");
        }
    }
}

/// How often a completion or release is tried before the key is left to its lease (a
/// release) or to `complete_later` (a completion).
const SETTLE_ATTEMPTS: u32 = 3;

/// The first wait of `complete_later`, doubled after each failure up to the second.
const LATER_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LATER_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `op`, the last store operation of a claim, retrying a failure or a time-out a
/// couple of times while the lease surely still holds (within a third of it, the renewal
/// period): each success here spares the client a `409` until the lease lapses, and for a
/// completion a second execution after it. The store's answer and the attempt that got
/// it, or `None` if every attempt failed.
async fn settle<F, Fut>(
    idempotency: &Idempotency,
    key: &str,
    what: &'static str,
    lease: Duration,
    mut op: F,
) -> Option<(bool, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(25);
    for attempt in 1..=SETTLE_ATTEMPTS {
        match within(idempotency.store_timeout(), op()).await {
            Ok(Ok(done)) => return Some((done, attempt)),
            Ok(Err(err)) => {
                tracing::warn!(target: TARGET, key = short(key), attempt, error = %err, "{what} failed");
            }
            Err(_) => tracing::warn!(target: TARGET, key = short(key), attempt, "{what} timed out"),
        }
        if attempt == SETTLE_ATTEMPTS {
            break;
        }
        let next_ends = started
            .elapsed()
            .saturating_add(backoff)
            .saturating_add(idempotency.store_timeout());
        if next_ends > lease / 3 {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static ENDPOINT: Endpoint = Endpoint::DEFAULT;

    async fn create(body: String) -> (StatusCode, String) {
        (StatusCode::CREATED, body)
    }

    fn post(key: Option<&str>) -> Request {
        post_with(key, "one widget")
    }

    fn post_with(key: Option<&str>, body: &'static str) -> Request {
        let mut request = Request::post("/orders");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.body(Body::from(body)).unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_future_of_a_request_holds_the_task_not_the_request() {
        let idempotency = Idempotency::new(MemoryStore::new());
        let future = run(
            &ENDPOINT,
            create,
            post(Some("k1")),
            idempotency.clone(),
            None,
        );
        // axum boxes this future, wrapped, for every request; about 1 900 bytes when it held the
        // request and the state of every step, too large for glibc's fast path for the box.
        let size = std::mem::size_of_val(&future);
        assert!(size <= 512, "the request future is {size} bytes");
        let first = future.await;
        assert_eq!(first.status(), StatusCode::CREATED);
        assert_eq!(text(first).await, "one widget");

        let replay = run(
            &ENDPOINT,
            create,
            post(Some("k1")),
            idempotency.clone(),
            None,
        )
        .await;
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert!(replay.headers().contains_key("idempotent-replayed"));
        // Without a key, the request is handed back and runs as it is.
        let bare = run(&ENDPOINT, create, post(None), idempotency, None).await;
        assert_eq!(bare.status(), StatusCode::CREATED);
        assert!(!bare.headers().contains_key("idempotent-replayed"));
        assert_eq!(text(bare).await, "one widget");
    }

    /// An execution of `k1` on an empty memory store: its completion is refused, as
    /// nothing was claimed, which these tests do not look at.
    fn execution() -> Execution {
        Execution {
            idempotency: Idempotency::new(MemoryStore::new()),
            key: "k1".into(),
            token: FencingToken(1),
            lease: Duration::from_secs(10),
            ttl: Duration::from_secs(60),
            policy: StatusPolicy::default(),
        }
    }

    /// The largest allocation glibc serves from the thread's own cache, about 1 KB;
    /// larger ones come from the shared bins. (`tests/support` has its own, for the
    /// stores' futures: the crate's unit tests cannot reach it.)
    const ALLOCATOR_CACHE: usize = 1024;

    /// The task is allocated for every request that takes part in the protocol. It was
    /// 2.3 KB, from the shared bins, before its request, its execution and its late
    /// release were boxed.
    #[tokio::test]
    async fn a_request_task_fits_the_allocators_cache() {
        let idempotency = Idempotency::new(MemoryStore::new());
        let (task, _answer) = task(&ENDPOINT, create, post(Some("k1")), idempotency, None);
        let size = std::mem::size_of_val(&*task);
        assert!(size <= ALLOCATOR_CACHE, "the request task is {size} bytes");
    }

    /// A first execution's future is boxed on its own (see `task`). It was 1.4 KB, past
    /// the allocator's per-thread cache, while it held the renewal's timers and kept
    /// the guarded work's outcome beside the completion.
    #[tokio::test]
    async fn an_execution_fits_the_allocators_cache() {
        let run = execution();
        // What an axum handler's `call` returns.
        let handler: Pin<Box<dyn Future<Output = Response> + Send>> =
            Box::pin(create("one widget".into()).map(IntoResponse::into_response));
        let execution = run.execute(handler);
        let size = std::mem::size_of_val(&execution);
        assert!(size <= ALLOCATOR_CACHE, "the execution is {size} bytes");
        assert_eq!(text(execution.await).await, "one widget");
    }

    /// A handler that waits is polled again when it wakes the task, not twice in a row
    /// when the lease's renewals start beside it.
    #[tokio::test]
    async fn a_waiting_handler_is_polled_once_per_wake() {
        struct Counted<F> {
            polls: Arc<AtomicUsize>,
            inner: Pin<Box<F>>,
        }
        impl<F: Future> Future for Counted<F> {
            type Output = F::Output;
            fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
                self.polls.fetch_add(1, Ordering::SeqCst);
                self.inner.as_mut().poll(cx)
            }
        }
        let run = execution();
        let polls = Arc::new(AtomicUsize::new(0));
        let (send, answer) = oneshot::channel::<&'static str>();
        let handler: Pin<Box<dyn Future<Output = Response> + Send>> = Box::pin(Counted {
            polls: polls.clone(),
            inner: Box::pin(async move { answer.await.unwrap().into_response() }),
        });
        let mut execution = std::pin::pin!(run.execute(handler));
        assert!(poll_once(execution.as_mut()).await.is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled before it was woken"
        );
        send.send("done").unwrap();
        assert_eq!(text(execution.await).await, "done");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    /// Whatever becomes of a request (stored, released after an error or a panic,
    /// answered by a replay, a conflict or a mismatch), a tiered store forgets the
    /// fingerprint of every claim it granted: none is left to pile up.
    #[tokio::test]
    async fn a_tiered_store_forgets_every_claim_the_protocol_ends() {
        async fn fails() -> StatusCode {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        async fn panics() -> StatusCode {
            panic!("a bug in the handler")
        }
        static FINISH: tokio::sync::Notify = tokio::sync::Notify::const_new();
        async fn slow() -> StatusCode {
            FINISH.notified().await;
            StatusCode::CREATED
        }
        fn send<H: Handler<T, Idempotency>, T: 'static>(
            handler: H,
            key: &str,
            body: &'static str,
            idempotency: &Idempotency,
        ) -> impl Future<Output = Response> + Send + 'static {
            let request = post_with(Some(key), body);
            run(&ENDPOINT, handler, request, idempotency.clone(), None)
        }
        let store = crate::store::TieredStore::new(MemoryStore::new(), MemoryStore::new());
        let idempotency = &Idempotency::new(store.clone());

        let stored = send(create, "k1", "a", idempotency).await;
        assert_eq!(stored.status(), StatusCode::CREATED);
        let replay = send(create, "k1", "a", idempotency).await;
        assert!(replay.headers().contains_key("idempotent-replayed"));
        let mismatch = send(create, "k1", "b", idempotency).await;
        assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let failed = send(fails, "k2", "a", idempotency).await;
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let panicked = send(panics, "k3", "a", idempotency).await;
        assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let before = store.remembered();
        let first = tokio::spawn(send(slow, "k4", "a", idempotency));
        // Until the first holds its claim.
        while store.remembered() == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let conflict = send(slow, "k4", "a", idempotency).await;
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        FINISH.notify_one();
        assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
        idempotency.drain().await;
        assert_eq!(store.remembered(), 0);
    }

    #[tokio::test]
    async fn a_request_given_up_while_its_body_arrives_stops_reading_it() {
        let idempotency = Idempotency::new(MemoryStore::new());
        let (body, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let request = Request::post("/orders")
            .header("idempotency-key", "k3")
            .body(Body::from_stream(stream))
            .unwrap();
        let mut future = Box::pin(run(&ENDPOINT, create, request, idempotency.clone(), None));
        // The body never comes: the task waits for it, spawned.
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut future).await;
        assert!(waited.is_err(), "the request answered without its body");
        drop(future);
        // The task lets go of the body once the request is dropped; it used to hold it
        // until the connection closed.
        let released = tokio::time::timeout(Duration::from_secs(10), body.closed()).await;
        assert!(released.is_ok(), "the body is still being read");
        // And the key was never claimed.
        let response = run(&ENDPOINT, create, post(Some("k3")), idempotency, None).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_first_poll_claims_nothing() {
        let idempotency = Idempotency::new(MemoryStore::new());
        let store = idempotency.clone();
        drop(run(&ENDPOINT, create, post(Some("k2")), store, None));
        // Had the dropped request claimed the key, this one would get a 409.
        let response = run(&ENDPOINT, create, post(Some("k2")), idempotency, None).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(!response.headers().contains_key("idempotent-replayed"));
    }
}
