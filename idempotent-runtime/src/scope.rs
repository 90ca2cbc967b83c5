//! Who is asking: the caller's identity, folded into the stored key.
//!
//! Without a scope, the stored key is (method, path, key). Two tenants of a multi-tenant
//! API that happen to send the same `Idempotency-Key` (a client library seeded the same
//! way, a key copied from the docs, a guessed key) would then share one record, and the
//! second would receive the first one's response. **A multi-tenant API must set a
//! scope** on every idempotent endpoint. There are two ways:
//!
//! - `scope = header("Authorization")`: the SHA-256 of a request header. Right when the
//!   header itself identifies the caller (an API key, a tenant id set by a trusted
//!   gateway). A bearer token that is refreshed gives a new scope: a retry sent with the
//!   new token after a lost response runs the handler again. Use an extractor for those.
//!   A keyed request without the header gets `400`
//!   ([`#missing-scope`](crate::problem#missing-scope)) rather than a scope shared with
//!   every other caller that lacks it.
//! - `scope = AuthUser`: an extractor of your own, the one your handlers already use to
//!   authenticate, implementing [`Scope`]. Right when the identity comes from a session,
//!   a verified JWT or a database lookup.
//!
//! ```
//! use axum::{Router, extract::FromRequestParts, http::{StatusCode, request::Parts}, routing::post};
//! use idempotent_runtime::{Idempotency, MemoryStore, Scope, idempotent};
//!
//! /// The authenticated tenant, from a header a gateway sets after checking the token.
//! struct Tenant(String);
//!
//! impl<S: Send + Sync> FromRequestParts<S> for Tenant {
//!     type Rejection = StatusCode;
//!
//!     async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, StatusCode> {
//!         let id = parts.headers.get("x-tenant-id").and_then(|v| v.to_str().ok());
//!         id.map(|id| Tenant(id.to_owned())).ok_or(StatusCode::UNAUTHORIZED)
//!     }
//! }
//!
//! impl Scope for Tenant {
//!     fn scope(&self) -> String {
//!         self.0.clone()
//!     }
//! }
//!
//! #[idempotent(scope = Tenant)]
//! async fn create_invoice() -> &'static str {
//!     "created"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/invoices", post(create_invoice))
//!     .with_state(Idempotency::new(MemoryStore::new()));
//! ```
//!
//! The scope extractor runs for every request whose method the protocol applies to
//! (all but `GET`, `HEAD`, `OPTIONS` and `TRACE`), with or without a key, before the
//! key is claimed. When it rejects the request, its rejection is the response: the
//! handler does not run and no key is claimed. When the handler takes the same
//! extractor as an argument, it runs twice per request, once for the scope and once
//! for the handler.
//!
//! The scope is hashed together with the method, path and key; neither it nor the raw
//! key is stored or logged.

use axum::extract::{FromRequestParts, Request};
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};

use crate::IdempotencyState;
use crate::protocol::{Endpoint, passes_through, run};

/// The identity an extractor contributes to the stored key: `scope = YourExtractor`.
///
/// Return what separates callers that must never see each other's responses: a tenant
/// id, an account id, a user id. Requests with equal scopes (and the same method, path
/// and key) share one record; requests with different scopes never do.
///
/// ```
/// use idempotent_runtime::Scope;
///
/// struct AuthUser {
///     account_id: u64,
///     user_id: u64,
/// }
///
/// impl Scope for AuthUser {
///     /// Keys are shared by the users of one account.
///     fn scope(&self) -> String {
///         self.account_id.to_string()
///     }
/// }
///
/// let user = AuthUser { account_id: 7, user_id: 42 };
/// assert_eq!(user.scope(), "7");
/// # let _ = user.user_id;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the `scope` of an `#[idempotent]` handler: it does not implement `Scope`",
    label = "`scope = {Self}` needs `{Self}: idempotent_runtime::Scope`",
    note = "implement it to say which tenant or principal a request belongs to, for example: `impl idempotent_runtime::Scope for {Self} {{ fn scope(&self) -> String {{ self.tenant_id.to_string() }} }}`",
    note = "or scope by a header instead: `scope = header(\"Authorization\")`"
)]
pub trait Scope {
    /// The caller's identity; requests with different scopes never share a record.
    fn scope(&self) -> String;
}

/// Extracts the scope with `P`, then runs the protocol; `scope = P` expands to this.
#[doc(hidden)]
pub async fn run_scoped<S, H, T, P>(
    endpoint: &'static Endpoint,
    handler: H,
    request: Request,
    state: S,
) -> Response
where
    S: IdempotencyState + Clone + Send + Sync + 'static,
    H: Handler<T, S>,
    P: FromRequestParts<S> + Scope,
{
    if passes_through(request.method()) {
        return run(endpoint, handler, request, state, None).await;
    }
    let (mut parts, body) = request.into_parts();
    let scope = match P::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal.scope(),
        Err(rejection) => return rejection.into_response(),
    };
    let request = Request::from_parts(parts, body);
    run(endpoint, handler, request, state, Some(scope)).await
}
