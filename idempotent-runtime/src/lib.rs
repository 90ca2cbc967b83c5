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
}
