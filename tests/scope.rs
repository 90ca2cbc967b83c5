//! `scope = ...` keeps tenants apart: two tenants sending the same idempotency key get
//! separate executions, and each one's retries replay its own response.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::{Request, StatusCode, request::Parts};
use axum::routing::post;
use axum::{Router, response::IntoResponse};
use http_body_util::BodyExt;
use idempotent_runtime::{Idempotency, MemoryStore, Scope, idempotent};
use tower::ServiceExt;

#[derive(Clone, FromRef)]
struct AppState {
    runs: Runs,
    tenants: Tenants,
    idempotency: Idempotency,
}

/// How many times the handlers ran.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

/// The tenants the app knows.
#[derive(Clone)]
struct Tenants(Arc<HashSet<&'static str>>);

/// The caller's tenant, from `X-Tenant`, checked against the state's `Tenants`.
struct Tenant(String);

impl<S: Send + Sync> FromRequestParts<S> for Tenant
where
    Tenants: FromRef<S>,
{
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tenant = parts
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .ok_or((StatusCode::UNAUTHORIZED, "no tenant"))?;
        if !Tenants::from_ref(state).0.contains(tenant) {
            return Err((StatusCode::FORBIDDEN, "unknown tenant"));
        }
        Ok(Tenant(tenant.to_owned()))
    }
}

impl Scope for Tenant {
    fn scope(&self) -> String {
        self.0.clone()
    }
}

async fn record_run(runs: &Runs) -> impl IntoResponse + use<> {
    let run = runs.0.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("run {run}"))
}

#[idempotent(scope = header("Authorization"))]
async fn by_header(State(runs): State<Runs>) -> impl IntoResponse {
    record_run(&runs).await
}

#[idempotent(scope = Tenant)]
async fn by_extractor(State(runs): State<Runs>) -> impl IntoResponse {
    record_run(&runs).await
}

#[idempotent]
async fn unscoped(State(runs): State<Runs>) -> impl IntoResponse {
    record_run(&runs).await
}

fn app() -> (Router, Runs) {
    let runs = Runs::default();
    let state = AppState {
        runs: runs.clone(),
        tenants: Tenants(Arc::new(HashSet::from(["acme", "globex"]))),
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let router = Router::new()
        .route("/by-header", post(by_header).get(by_header))
        .route("/by-extractor", post(by_extractor).get(by_extractor))
        .route("/unscoped", post(unscoped))
        .with_state(state);
    (router, runs)
}

/// What a client sees: status, body, and whether it was a replay.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    body: String,
    replayed: bool,
}

async fn send(app: &Router, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("idempotency-key", "same-key-for-everyone");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        replayed,
    }
}

fn created(body: &str, replayed: bool) -> Answer {
    Answer {
        status: StatusCode::CREATED,
        body: body.to_owned(),
        replayed,
    }
}

#[tokio::test]
async fn header_scope_gives_each_tenant_its_own_execution_and_replay() {
    let (app, runs) = app();
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];

    let first_alice = send(&app, "POST", "/by-header", &alice).await;
    let first_bob = send(&app, "POST", "/by-header", &bob).await;
    let retry_alice = send(&app, "POST", "/by-header", &alice).await;
    let retry_bob = send(&app, "POST", "/by-header", &bob).await;

    assert_eq!(first_alice, created("run 0", false));
    assert_eq!(
        first_bob,
        created("run 1", false),
        "bob must not see alice's response"
    );
    assert_eq!(retry_alice, created("run 0", true));
    assert_eq!(retry_bob, created("run 1", true));
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

/// Callers without the scope header would otherwise share one scope, and one could be
/// answered another's response: a keyed request without it is refused, one without a
/// key goes through as any unkeyed request does.
#[tokio::test]
async fn a_keyed_request_without_the_scope_header_is_refused() {
    let (app, runs) = app();
    let first = send(&app, "POST", "/by-header", &[]).await;
    let second = send(&app, "POST", "/by-header", &[]).await;
    for answer in [&first, &second] {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
        assert!(answer.body.contains("#missing-scope"), "{answer:?}");
        assert!(answer.body.contains("`authorization` header"), "{answer:?}");
    }
    assert_eq!(runs.0.load(Ordering::SeqCst), 0, "the handler must not run");

    let unkeyed = Request::post("/by-header").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(unkeyed).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn extractor_scope_gives_each_tenant_its_own_execution_and_replay() {
    let (app, runs) = app();
    let acme = [("x-tenant", "acme")];
    let globex = [("x-tenant", "globex")];

    let first_acme = send(&app, "POST", "/by-extractor", &acme).await;
    let first_globex = send(&app, "POST", "/by-extractor", &globex).await;
    let retry_acme = send(&app, "POST", "/by-extractor", &acme).await;
    let retry_globex = send(&app, "POST", "/by-extractor", &globex).await;

    assert_eq!(first_acme, created("run 0", false));
    assert_eq!(
        first_globex,
        created("run 1", false),
        "globex must not see acme's response"
    );
    assert_eq!(retry_acme, created("run 0", true));
    assert_eq!(retry_globex, created("run 1", true));
    assert_eq!(runs.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn scope_extractor_rejection_is_the_response_and_claims_nothing() {
    let (app, runs) = app();

    let anonymous = send(&app, "POST", "/by-extractor", &[]).await;
    let stranger = send(&app, "POST", "/by-extractor", &[("x-tenant", "initech")]).await;
    assert_eq!(
        anonymous,
        Answer {
            status: StatusCode::UNAUTHORIZED,
            body: "no tenant".into(),
            replayed: false,
        }
    );
    assert_eq!(
        stranger,
        Answer {
            status: StatusCode::FORBIDDEN,
            body: "unknown tenant".into(),
            replayed: false,
        }
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 0, "the handler must not run");

    // Nothing was claimed: the same key is fresh for a tenant that is let in.
    let acme = send(&app, "POST", "/by-extractor", &[("x-tenant", "acme")]).await;
    assert_eq!(acme, created("run 0", false));
}

#[tokio::test]
async fn safe_methods_do_not_run_the_scope_extractor() {
    let (app, runs) = app();

    let get = send(&app, "GET", "/by-extractor", &[]).await;

    assert_eq!(get, created("run 0", false));
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_a_scope_tenants_with_the_same_key_share_one_record() {
    let (app, runs) = app();

    let acme = send(&app, "POST", "/unscoped", &[("x-tenant", "acme")]).await;
    let globex = send(&app, "POST", "/unscoped", &[("x-tenant", "globex")]).await;

    assert_eq!(acme, created("run 0", false));
    assert_eq!(
        globex,
        created("run 0", true),
        "this is what `scope` prevents"
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
}
