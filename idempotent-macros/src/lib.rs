//! The `#[idempotent]` attribute. Depend on `idempotent-runtime`, which re-exports it
//! and documents every argument; this crate holds only the code generation.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;

/// Runs an Axum handler at most once per idempotency key.
///
/// A retry gets the stored response replayed (`Idempotent-Replayed: true`), a concurrent
/// duplicate gets `409`, the same key with a different body gets `422`. The handler is
/// left as written and is used like any other (`post(create_order)`); the router state
/// must hold an `Idempotency` (the whole state, or a field reached through `FromRef`).
///
/// ```text
/// #[idempotent(ttl = "24h", key = header, required)]
/// async fn create_order(State(db): State<Db>, Json(order): Json<OrderCreate>) -> impl IntoResponse
/// ```
///
/// | argument | example | meaning |
/// | --- | --- | --- |
/// | `ttl` | `ttl = "24h"` | how long the response is kept (default: the app's, 24 h; at least 1 ms) |
/// | `lease` | `lease = "30s"` | how long a crashed owner's claim blocks the key (default: the app's, 60 s; at least 1 ms) |
/// | `key` | `key = header`, `header("X-Request-Id")`, `query("k")`, `json("/event/id")`, `body` | where the key comes from (default: the `Idempotency-Key` header) |
/// | `required` | `required` | a request without a key gets `400` instead of running unprotected |
/// | `scope` | `scope = header("Authorization")`, `scope = Tenant` | the caller's identity, folded into the key: multi-tenant APIs must set it |
/// | `store` | `store = "2xx,4xx"` | which statuses are stored (default `2xx`; the list replaces it and must keep a 2xx) |
/// | `fingerprint` | `fingerprint = exclude("/sent_at")`, `none`, `body` | what makes "the same request" (default: the body, canonical JSON, and the query string) |
/// | `crate` | `crate = "idempotency"` | the path of `idempotent-runtime` where the dependency is renamed or re-exported |
///
/// Every argument has a runnable example in the `idempotent-runtime` crate docs, which
/// also describe the protocol and the stores. Mistakes are compile errors at the
/// argument, with the fix.
///
/// Attributes that wrap or inspect the function, like `#[tracing::instrument]` and
/// `#[utoipa::path]`, go above `#[idempotent]`, where they see the handler's own
/// arguments; below it they would see the generated wrapper's, and either of those two
/// there is a compile error. axum's `#[debug_handler]` cannot be combined with it.
///
/// The function keeps its name and visibility, but its signature becomes one axum calls
/// with the whole request: a test calls it through a `Router`, not directly with its
/// extractors.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
