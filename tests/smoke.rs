use axum::{
    Json, Router,
    extract::{FromRef, FromRequestParts, State},
    http::{StatusCode, request::Parts},
    response::IntoResponse,
    routing::post,
};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};
use std::convert::Infallible;
use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Arc<AtomicUsize>,
    held: Held,
    events: Events,
    idempotency: Idempotency,
}

/// How many `Permit`s are alive.
#[derive(Clone, Default)]
struct Held(Arc<AtomicUsize>);

/// A guard taken as an argument and never named by the body (a semaphore permit, a lock).
struct Permit(Held);

impl<S: Send + Sync> FromRequestParts<S> for Permit
where
    Held: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(_: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let held = Held::from_ref(state);
        held.0.fetch_add(1, Ordering::SeqCst);
        Ok(Self(held))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Arguments as an `async fn` takes them: unnamed ones live until the body ends, and
/// `ref` and `ref mut` patterns borrow from the request's future.
#[idempotent]
async fn guarded(
    _permit: Permit,
    _: Permit,
    State(ref held): State<Held>,
    ref mut body: String,
) -> String {
    tokio::task::yield_now().await;
    body.push_str(&held.0.load(Ordering::SeqCst).to_string());
    body.clone()
}

/// What happened to a request, in order: arguments dropped, by position, and the
/// response built.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn note(&self, event: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// An argument that notes when it is dropped, by its position among the arguments.
struct Noted(Events, usize);

/// How many `Noted` arguments the request has given out.
#[derive(Clone)]
struct Given(usize);

impl<S: Send + Sync> FromRequestParts<S> for Noted
where
    Events: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let position = parts.extensions.get::<Given>().map_or(0, |given| given.0);
        parts.extensions.insert(Given(position + 1));
        Ok(Self(Events::from_ref(state), position))
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        self.0.note(format!("drop {}", self.1));
    }
}

/// A response that notes when it is built.
struct Noting(Events);

impl IntoResponse for Noting {
    fn into_response(self) -> axum::response::Response {
        self.0.note("response".to_owned());
        "noted".into_response()
    }
}

async fn noted_bare(_first: Noted, _second: Noted, State(events): State<Events>) -> Noting {
    Noting(events)
}

#[idempotent]
async fn noted(_first: Noted, _second: Noted, State(events): State<Events>) -> Noting {
    Noting(events)
}

#[derive(serde::Deserialize)]
struct Order {
    qty: u32,
}

#[idempotent(ttl = "1h", key = header)]
async fn create(State(runs): State<Arc<AtomicUsize>>, Json(o): Json<Order>) -> impl IntoResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("run {n} qty {}", o.qty))
}

#[idempotent]
async fn noargs() -> &'static str {
    "x"
}

#[idempotent]
async fn res(Json(o): Json<Order>) -> Result<String, StatusCode> {
    if o.qty == 0 {
        Err(StatusCode::BAD_REQUEST)
    } else {
        Ok("ok".into())
    }
}

fn state() -> AppState {
    AppState {
        runs: Default::default(),
        held: Held::default(),
        events: Events::default(),
        idempotency: Idempotency::new(MemoryStore::new()),
    }
}

#[tokio::test]
async fn smoke() {
    let state = state();
    let app = Router::new()
        .route("/o", post(create))
        .route("/n", post(noargs))
        .route("/r", post(res))
        .with_state(state.clone());
    for attempt in 0..2 {
        let req = axum::http::Request::post("/o")
            .header("idempotency-key", "k1")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"qty":2}"#))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 201);
        let replayed = resp.headers().contains_key("idempotent-replayed");
        assert_eq!(replayed, attempt == 1, "the retry is the replay");
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn arguments_live_as_long_as_the_body() {
    let state = state();
    let app = Router::new()
        .route("/g", post(guarded))
        .with_state(state.clone());
    let req = axum::http::Request::post("/g")
        .header("idempotency-key", "k1")
        .body(axum::body::Body::from("held: "))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "held: 2", "both permits held while the body ran");
    assert_eq!(state.held.0.load(Ordering::SeqCst), 0, "and dropped after");
}

/// As from an `async fn`: the arguments are dropped when the body ends, the last first,
/// and before the response is built from what it returned.
#[tokio::test]
async fn arguments_are_dropped_as_an_async_fn_drops_them() {
    let state = state();
    let app = Router::new()
        .route("/bare", post(noted_bare))
        .route("/noted", post(noted))
        .with_state(state.clone());
    let mut seen = Vec::new();
    for path in ["/bare", "/noted"] {
        let req = axum::http::Request::post(path)
            .header("idempotency-key", "k1")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        seen.push(state.events.take());
    }
    assert_eq!(seen[0], ["drop 1", "drop 0", "response"]);
    assert_eq!(seen[1], seen[0], "the attribute's order is the async fn's");
}
