#![doc = include_str!("../docs/crate.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod fingerprint;
pub mod key;
pub mod once;
pub mod policy;
pub mod problem;
pub mod protocol;
pub mod response;
pub mod scope;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

mod idempotency;

pub use fingerprint::Fingerprint;
pub use idempotency::{Idempotency, IdempotencyState};
pub use response::StoredResponse;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres::PostgresStore;

/// The `sqlx` crate the [`PostgresStore`] is built on, so that the pool you hand it is of
/// the matching version.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use ::sqlx;

pub use scope::Scope;
pub use store::{Claim, FencingToken, MemoryStore, Record, Store, StoreError};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::redis::RedisStore;

/// The `redis` crate the [`RedisStore`] is built on, so that the connection you hand it
/// is of the matching version.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ::redis;

#[cfg(feature = "macros")]
pub use idempotent_macros::idempotent;

/// What the `#[idempotent]` expansion refers to, and nothing else. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use axum::extract::{FromRequest, FromRequestParts, Request};
    pub use axum::response::Response;
    pub use core::clone::Clone;
    pub use core::marker::{Send, Sync};
    pub use core::option::Option::{None, Some};
    pub use core::time::Duration;

    pub use crate::IdempotencyState;
    pub use crate::key::KeySource;
    pub use crate::policy::StatusPolicy;
    pub use crate::protocol::{Endpoint, FingerprintMode, RouterState, ScopeSource, run};
    pub use crate::scope::{Scope, run_scoped};

    /// The future of an `#[idempotent]` handler's body, which must be `Send`, as axum
    /// requires of every handler. Passed through here, one that is not is reported as
    /// rustc reports any such future, naming what is held across which `.await`,
    /// rather than as a `Handler` bound the handler's closure does not meet.
    pub fn handler_future<F: core::future::Future + Send>(future: F) -> F {
        future
    }

    /// An argument of an `#[idempotent]` handler before its last: an extractor of the
    /// request's parts, as axum requires. Bound through it, one that is not is reported
    /// with a word on where an extractor that reads the body goes, which covers an
    /// extractor of the user's own the attribute cannot know by its name.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument before the last: it does not implement `FromRequestParts`",
        label = "not an extractor of the request's parts",
        note = "only a handler's last argument may read the request body (`Json`, `Form`, `String`, `Bytes`, or an extractor of your own that implements `FromRequest`); if `{Self}` does, make it the last argument"
    )]
    pub trait PartsArgument<S>: FromRequestParts<S> {}

    #[diagnostic::do_not_recommend]
    impl<S, T: FromRequestParts<S>> PartsArgument<S> for T {}

    /// The type of `scope = Type`: an extractor of the request's parts. Bound through
    /// it, one that is not is reported as a scope, not as one of the handler's
    /// arguments, which is all that axum's own error could say.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the scope of an `#[idempotent]` handler: it does not implement `FromRequestParts`",
        label = "the scope is extracted from the request's parts",
        note = "a scope type is extracted from each request before its key is claimed, as an argument of the handler would be: implement `FromRequestParts` for `{Self}` (its rejection answers a request it cannot identify), or take the scope from a header with `scope = header(\"...\")`"
    )]
    pub trait ScopeExtractor<S>: FromRequestParts<S> {}

    #[diagnostic::do_not_recommend]
    impl<S, T: FromRequestParts<S>> ScopeExtractor<S> for T {}

    /// What an `#[idempotent]` handler returns: anything axum turns into a response.
    /// The expansion converts through it to word the error for a return type that is not.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the return type of a handler: it does not implement `IntoResponse`",
        label = "the return type of an `#[idempotent]` handler must implement `axum::response::IntoResponse`",
        note = "return a type that does, like `String`, `Json<T>`, `(StatusCode, T)`, `Response`, or `Result<T, E>` where both `T` and `E` do; or implement `IntoResponse` for `{Self}`"
    )]
    pub trait HandlerOutput {
        /// The response.
        fn into_response(self) -> Response;
    }

    #[diagnostic::do_not_recommend]
    impl<T: axum::response::IntoResponse> HandlerOutput for T {
        fn into_response(self) -> Response {
            axum::response::IntoResponse::into_response(self)
        }
    }
}
