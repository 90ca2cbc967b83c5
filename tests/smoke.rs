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
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Arc<AtomicUsize>,
    held: Held,
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

#[tokio::test]
async fn smoke() {
    let state = AppState {
        runs: Default::default(),
        held: Held::default(),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
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
    let state = AppState {
        runs: Default::default(),
        held: Held::default(),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
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
