//! Validation: what each argument means for the others and for the handler's signature.
//!
//! Parsing (`attr.rs`) accepts each argument on its own; here the combinations that
//! cannot work are reported, each at the span of the token to change, together with
//! what to write instead.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Type};

use crate::attr::{Args, Errors, FingerprintArg, KeyArg};

/// Axum implements `Handler` for functions of up to 16 extractors.
const MAX_EXTRACTORS: usize = 16;

/// Extractors that consume the request body; axum needs them last.
const BODY_EXTRACTORS: &[&str] = &[
    "Body",
    "Bytes",
    "BytesMut",
    "Form",
    "Json",
    "Multipart",
    "RawForm",
    "Request",
    "String",
];

/// Arguments that conflict with each other.
pub(crate) fn check_args(args: &Args, errors: &mut Errors) {
    if let (Some(key), Some(required)) = (&args.key, &args.required)
        && matches!(key.value, KeyArg::Body)
    {
        errors.error(
            required.span,
            "`required` has no effect with `key = body`: every request has a body to be its key\nremove `required`",
        );
    }
    if let (Some(key), Some(fp)) = (&args.key, &args.fingerprint)
        && matches!(key.value, KeyArg::Body)
        && matches!(fp.value, FingerprintArg::None)
    {
        errors.error(
            fp.span,
            "`fingerprint = none` conflicts with `key = body`: the body's fingerprint is the key\nremove `fingerprint = none`",
        );
    }
    if let (Some(ttl), Some(lease)) = (&args.ttl, &args.lease)
        && lease.value > ttl.value
    {
        errors.error(
            lease.span,
            format!(
                "`lease` ({}) is longer than `ttl` ({}): the claim would outlive the response it protects\nmake `lease` shorter than `ttl`",
                humantime::format_duration(lease.value),
                humantime::format_duration(ttl.value)
            ),
        );
    }
}

/// Body extractors for bodies that are not JSON: a key in a JSON field is never there.
const NOT_JSON: &[&str] = &["Form", "RawForm", "Multipart"];

/// Arguments that read the body in a way the handler's body extractor rules out.
pub(crate) fn check_body_source(args: &Args, func: &ItemFn, errors: &mut Errors) {
    let Some(last) = arg_types(func).last().and_then(|ty| body_extractor(ty)) else {
        return;
    };
    if let Some(key) = &args.key
        && matches!(key.value, KeyArg::Json(_))
        && NOT_JSON.contains(&last.as_str())
    {
        errors.error(
            key.span,
            format!(
                "`key = json(..)` reads the key from a JSON body, but this handler takes its body as `{last}`, so every keyed request would get 400\nread the key from a header (`key = header`) or a query parameter (`key = query(\"name\")`)"
            ),
        );
    }
    if let Some(fp) = &args.fingerprint
        && let FingerprintArg::Exclude(pointers) = &fp.value
    {
        let nested = pointers
            .iter()
            .find(|p| p.get(1..).is_some_and(|rest| rest.contains('/')));
        match (last.as_str(), nested) {
            ("Multipart", _) => errors.error(
                fp.span,
                "`exclude` leaves out fields of a JSON body or a form, and this handler takes a multipart body, so nothing would be left out\nremove `exclude`, or use `fingerprint = none` if the body changes between retries",
            ),
            ("Form" | "RawForm", Some(nested)) => errors.error(
                fp.span,
                format!(
                    "`{nested}` names a nested field, but this handler takes a form, whose fields are flat, so nothing would be left out\nname the form field, like `exclude(\"/sent_at\")`"
                ),
            ),
            _ => {}
        }
    }
}

/// What axum and the protocol need from the handler's signature.
pub(crate) fn check_signature(func: &ItemFn, errors: &mut Errors) {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.error(
            sig.fn_token.span,
            "`#[idempotent]` handlers must be `async fn`\nadd `async` before `fn`",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.error(
            constness.span,
            "`#[idempotent]` handlers cannot be `const fn`\nremove `const`",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.error(
            unsafety.span,
            "`#[idempotent]` handlers cannot be `unsafe fn`\nremove `unsafe`",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.error(
            abi.extern_token.span,
            "`#[idempotent]` handlers cannot have an `extern` ABI\nremove the ABI",
        );
    }
    if let Some(param) = sig.generics.params.first() {
        errors.error(
            param.span(),
            "`#[idempotent]` handlers cannot be generic: axum needs to know each extractor's type\nname the concrete types in the signature",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.error(
            where_clause.where_token.span,
            "`#[idempotent]` handlers cannot have a `where` clause\nname the concrete types in the signature",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.error(
            variadic.dots.spans[0],
            "`#[idempotent]` handlers cannot be variadic",
        );
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => errors.error(
                receiver.self_token.span,
                "`#[idempotent]` handlers cannot take `self`: axum calls a handler without a value to call it on\nmake it an associated function, and extract what `self` held, e.g. with `State(app): State<App>`",
            ),
            FnArg::Typed(typed) => {
                for attr in &typed.attrs {
                    if removes_argument(attr) {
                        errors.push(syn::Error::new_spanned(
                            attr,
                            "`#[idempotent]` handlers cannot have `#[cfg]` on an argument: the extractor is still run, and named, where the attribute cannot follow it\nput the `#[cfg]` on two versions of the handler instead",
                        ));
                    }
                }
                if let Type::Reference(reference) = &*typed.ty {
                    errors.error(
                        reference.and_token.span,
                        "`#[idempotent]` handlers take their arguments by value: axum hands each extractor over owned, with nothing for it to borrow from\nremove the `&`, like `headers: HeaderMap`",
                    );
                }
                if let Some(span) = impl_trait_span(&typed.ty) {
                    errors.error(
                        span,
                        "`#[idempotent]` handlers cannot take `impl Trait` arguments: axum needs each extractor's type\nname the extractor type",
                    );
                }
            }
        }
    }
    if let Some(extra) = sig.inputs.iter().nth(MAX_EXTRACTORS) {
        errors.error(
            extra.span(),
            format!(
                "this handler takes {} arguments, but axum handlers take at most {MAX_EXTRACTORS}\ngroup some of them in a tuple, like `(method, headers): (Method, HeaderMap)`, which is an extractor too",
                sig.inputs.len()
            ),
        );
    }
    check_body_last(func, errors);
    check_attributes_below(func, errors);
}

/// An attribute below `#[idempotent]` applies to what it generates: a wrapper taking the
/// router state and the raw request. For `#[instrument]` that means a compile error about
/// `Debug` deep in tracing's expansion, or spans that record the wrong arguments; axum's
/// `#[debug_handler]` rejects the wrapper as generic (and above, it calls the handler with
/// the arguments the wrapper replaced); a second `#[idempotent]` would too. utoipa's
/// `#[utoipa::path]` compiles below, but documents the wrapper: the path parameters and
/// the request body it infers from the handler's arguments are silently left out.
fn check_attributes_below(func: &ItemFn, errors: &mut Errors) {
    for attr in &func.attrs {
        let path = attr.path();
        let Some(last) = path.segments.last() else {
            continue;
        };
        let name = || {
            let segments: Vec<_> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            segments.join("::")
        };
        // `does`: what it would do to the wrapper; `losing`: what that costs, if more.
        let must_go_above = |does: &str, losing: &str| {
            format!(
                "`#[{}]` must go above `#[idempotent]`: below it, it would {does} the generated wrapper, whose arguments are the router state and the raw request{losing}\nmove it above `#[idempotent]`, where it sees the handler's own arguments",
                name()
            )
        };
        if last.ident == "instrument" {
            errors.error(last.ident.span(), must_go_above("instrument", ""));
        } else if name() == "utoipa::path" {
            errors.error(
                last.ident.span(),
                must_go_above(
                    "document",
                    ", and leave the handler's path parameters and request body out of the OpenAPI document",
                ),
            );
        } else if last.ident == "idempotent" {
            errors.error(
                last.ident.span(),
                "`#[idempotent]` is applied twice to this handler\nkeep one, with all the arguments it needs",
            );
        } else if last.ident == "debug_handler" {
            errors.error(
                last.ident.span(),
                format!("`#[{}]` cannot be combined with `#[idempotent]`, above or below it: it checks the function `#[idempotent]` replaces\nremove it; an argument that is not an extractor is reported where the handler is added to the router, with a note at the argument", name()),
            );
        }
    }
}

/// Whether an argument's attribute can compile the argument out: `#[cfg(..)]`, or a
/// `#[cfg_attr(.., cfg(..))]`. Others (`#[cfg_attr(test, allow(unused))]`) are kept on
/// the argument's binding.
fn removes_argument(attr: &syn::Attribute) -> bool {
    if attr.path().is_ident("cfg") {
        return true;
    }
    attr.path().is_ident("cfg_attr")
        && attr
            .parse_args_with(
                syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
            )
            .map_or(true, |metas| {
                metas
                    .iter()
                    .skip(1)
                    .any(|meta| meta.path().is_ident("cfg") || meta.path().is_ident("cfg_attr"))
            })
}

/// Only the last argument may consume the body (`Json`, `String`, `Bytes`, ...): axum
/// hands the body to the last extractor and only the request head to the others.
fn check_body_last(func: &ItemFn, errors: &mut Errors) {
    let types = arg_types(func);
    let Some((_, before_last)) = types.split_last() else {
        return;
    };
    for ty in before_last {
        if let Some(name) = body_extractor(ty) {
            errors.error(
                ty.span(),
                format!(
                    "`{name}` consumes the request body, so it must be the last argument\nmove it after the other arguments; a handler has at most one argument that reads the body"
                ),
            );
        }
    }
}

/// The types of the handler's arguments, in order.
pub(crate) fn arg_types(func: &ItemFn) -> Vec<&Type> {
    func.sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(&*typed.ty),
            FnArg::Receiver(_) => None,
        })
        .collect()
}

/// The last segment's name of a type path (`Json` for `axum::Json<Order>`).
fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        Type::Paren(inner) => type_name(&inner.elem),
        Type::Group(inner) => type_name(&inner.elem),
        _ => None,
    }
}

/// Extractors that extract what their first type argument does: `Option<_>` and
/// `Result<_, _>` (axum), `WithRejection<_, _>` (axum-extra), `Valid<_>` and `Garde<_>`
/// (axum-valid).
const WRAPPERS: &[&str] = &["Option", "Result", "WithRejection", "Valid", "Garde"];

/// The name of an extractor type, looking through the [`WRAPPERS`] (`Json` for
/// `Option<Json<Event>>` or `WithRejection<Json<Event>, ApiError>`).
fn extractor_name(ty: &Type) -> Option<String> {
    let name = type_name(ty)?;
    if !WRAPPERS.contains(&name.as_str()) {
        return Some(name);
    }
    let Type::Path(path) = ty else { return None };
    let syn::PathArguments::AngleBracketed(generics) = &path.path.segments.last()?.arguments else {
        return None;
    };
    match generics.args.first()? {
        syn::GenericArgument::Type(inner) => extractor_name(inner),
        _ => None,
    }
}

/// The name of an extractor that consumes the request body.
fn body_extractor(ty: &Type) -> Option<String> {
    extractor_name(ty).filter(|name| BODY_EXTRACTORS.contains(&name.as_str()))
}

/// The span of the first `impl` keyword in a type, if any.
fn impl_trait_span(ty: &Type) -> Option<Span> {
    fn find(tokens: proc_macro2::TokenStream) -> Option<Span> {
        tokens.into_iter().find_map(|token| match token {
            proc_macro2::TokenTree::Ident(ident) if ident == "impl" => Some(ident.span()),
            proc_macro2::TokenTree::Group(group) => find(group.stream()),
            _ => None,
        })
    }
    find(ty.to_token_stream())
}
