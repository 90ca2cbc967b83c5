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
/// See the `idempotent-runtime` crate for the arguments and the protocol.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
