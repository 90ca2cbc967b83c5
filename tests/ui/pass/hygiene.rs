//! The expansion only names `::idempotent_runtime::__private` paths and internal names
//! the user cannot see: shadowing the prelude and axum's names changes nothing, and it
//! is warning-free under strict lints.

#![deny(warnings, unused_qualifications, dead_code, missing_docs, unused_results)]
#![deny(unreachable_pub, unused_extern_crates, single_use_lifetimes, trivial_casts)]

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router, routing::post};
use idempotent_runtime::{Idempotency, MemoryStore, idempotent};

/// Shadows `core::result::Result`.
type Result<T> = core::result::Result<T, MyError>;
/// Shadows `axum::response::Response`.
type Response = String;
/// Shadows `axum::extract::Request`.
struct Request;
/// Shadows `Option`, `Some` and `None`.
enum Option {
    /// Shadows `Some`.
    Some,
    /// Shadows `None`.
    None,
}
/// Shadows `Clone`.
trait Clone {}
/// Shadows `Send`.
trait Send {}
/// Shadows `Sync`.
trait Sync {}
impl Clone for Request {}
impl Send for Request {}
impl Sync for Request {}
/// Shadows `core::time::Duration`.
struct Duration;
/// Shadows the protocol's names.
struct Endpoint;
/// Named like a generic parameter, the way a macro might name its own; used as a type
/// and as a value.
#[allow(non_camel_case_types)]
#[derive(serde::Deserialize)]
struct __S;
/// The same, the usual way.
#[derive(serde::Deserialize)]
struct S;
/// Named like what the expansion binds, less its prefix: a `const`, a `static` or a
/// unit struct in scope with a binding's exact name would turn that binding into a
/// pattern, so every binding carries the prefix `__idempotent_`.
#[allow(non_upper_case_globals)]
const __state: u8 = 0;
/// A unit struct named like a binding.
#[allow(non_camel_case_types)]
struct __request;
/// A static named like a binding.
#[allow(non_upper_case_globals)]
static __handler: u8 = 0;
/// A constant named like a binding.
#[allow(non_upper_case_globals)]
const __output: u8 = 0;
/// A constant named like a binding.
#[allow(non_upper_case_globals)]
const __ret: u8 = 0;
/// A constant named like a binding.
#[allow(non_upper_case_globals)]
const __value: u8 = 0;
/// A constant named like an argument's binding.
#[allow(non_upper_case_globals)]
const __arg0: u8 = 0;
/// A unit struct named like an argument's binding.
#[allow(non_camel_case_types)]
struct __arg1;
/// Named like the expansion's own `static`, less its prefix: items are not hygienic, and
/// the handler's body sees what the expansion declares around it.
const __ENDPOINT: u8 = 0;

/// The user's error type.
#[derive(Debug)]
struct MyError;

impl IntoResponse for MyError {
    fn into_response(self) -> axum::response::Response {
        StatusCode::BAD_REQUEST.into_response()
    }
}

/// The router state.
#[derive(core::clone::Clone, axum::extract::FromRef)]
struct AppState {
    count: u32,
    idempotency: Idempotency,
}

/// A handler using the shadowed names itself.
#[idempotent(ttl = "1h", lease = "10s", key = header("X-Request-Id"), required)]
async fn create(State(count): State<u32>, Json(n): Json<u32>) -> Result<Response> {
    #![allow(clippy::needless_return)]
    let _ = (Request, Option::Some, Option::None, Duration, Endpoint, __S);
    let _ = (__state, __request, __handler, __output, __ret, __value, __arg0, __arg1);
    let _: u8 = __ENDPOINT;
    if n == 0 {
        return Err(MyError);
    }
    Ok(format!("{}", count + n))
}

/// A handler whose argument types are named like generic parameters.
#[idempotent]
async fn typed(
    axum::extract::Query(S): axum::extract::Query<S>,
    Json(__S): Json<__S>,
) -> &'static str {
    "typed"
}

/// A handler with no arguments.
#[idempotent(scope = header("Authorization"), store = "2xx,4xx", fingerprint = none)]
async fn ping() -> impl IntoResponse {
    "pong"
}

/// Uses the imports, which `unused_qualifications` compares the expansion with.
fn uses<S: core::marker::Send + core::marker::Sync>()
where
    Json<u32>: FromRequest<S>,
    State<u32>: FromRequestParts<S>,
{
}

/// Uses the shadowing traits.
fn shadows<T: Clone + Send + Sync>() {}

fn main() {
    uses::<AppState>();
    shadows::<Request>();
    let state = AppState {
        count: 1,
        idempotency: Idempotency::new(MemoryStore::new()),
    };
    let _ = state.count;
    let _app: Router = Router::new()
        .route("/create", post(create))
        .route("/ping", post(ping))
        .route("/typed", post(typed))
        .with_state(state);
}
