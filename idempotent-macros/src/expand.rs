//! Code generation.
//!
//! Input:
//!
//! ```ignore
//! #[idempotent(ttl = "24h")]
//! pub async fn create(State(db): State<Db>, Json(order): Json<Order>) -> impl IntoResponse {
//!     body
//! }
//! ```
//!
//! Output (paths shortened):
//!
//! ```ignore
//! pub async fn create<__S, __M>(
//!     RouterState(__state): RouterState<__S>,
//!     __request: Request,
//! ) -> Response
//! where
//!     __S: IdempotencyState + Clone + Send + Sync + 'static,
//!     State<Db>: FromRequestParts<__S> + Send,
//!     Json<Order>: FromRequest<__S, __M> + Send,
//! {
//!     async fn create(State(db): State<Db>, Json(order): Json<Order>) -> impl IntoResponse {
//!         body
//!     }
//!     static __ENDPOINT: Endpoint = Endpoint { ttl: Some(Duration::from_secs(86400)), ..Endpoint::DEFAULT };
//!     run::<__S, _, (__M, State<Db>, Json<Order>)>(&__ENDPOINT, create, __request, __state).await
//! }
//! ```
//!
//! `RouterState<S>` implements `FromRequestParts<S>` for exactly one `S`, which lets the
//! compiler infer the router state from the router the handler is added to, so the
//! handler works with any state and sub-state. The user's function is kept verbatim
//! inside and called through axum's own `Handler` impl, so extraction and rejections
//! behave exactly as without the attribute.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Type};

use crate::attr::{Args, Errors, FingerprintArg, KeyArg, ScopeArg};

/// Axum implements `Handler` for functions of up to 16 extractors.
const MAX_EXTRACTORS: usize = 16;

pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = match Parser::parse2(
        |input: syn::parse::ParseStream<'_>| Args::parse(input, &mut errors),
        args,
    ) {
        Ok(args) => Some(args),
        Err(err) => {
            errors.push(err);
            None
        }
    };
    let func = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            errors.error(
                first_token_span(&item),
                "the `#[idempotent]` attribute can only be applied to `async fn` handlers",
            );
            return with_errors(item, errors);
        }
    };
    check_signature(&func, &mut errors);
    if let Some(args) = &args {
        check_args_against_signature(args, &func, &mut errors);
    }
    match (args, errors.finish()) {
        (Some(args), None) => expand(&args, func),
        (_, err) => {
            let mut errors = Errors::default();
            if let Some(err) = err {
                errors.push(err);
            }
            with_errors(func.into_token_stream(), errors)
        }
    }
}

/// The errors, followed by the item as written so that no secondary errors
/// ("cannot find function") appear and IDEs keep working.
fn with_errors(item: TokenStream, errors: Errors) -> TokenStream {
    let errors = errors.finish().map(|e| e.to_compile_error());
    quote! { #errors #item }
}

fn first_token_span(item: &TokenStream) -> Span {
    item.clone()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

fn check_signature(func: &ItemFn, errors: &mut Errors) {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.error(
            sig.fn_token.span,
            "the `#[idempotent]` attribute can only be applied to `async fn` handlers\nadd `async` before `fn`",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.error(
            constness.span,
            "an `#[idempotent]` handler cannot be `const`",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.error(
            unsafety.span,
            "an `#[idempotent]` handler cannot be `unsafe`",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.error(
            abi.span(),
            "an `#[idempotent]` handler cannot have an `extern` ABI",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.error(
            sig.generics.span(),
            "an `#[idempotent]` handler cannot be generic\naxum needs concrete extractor types; name them in the signature",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.error(
            variadic.span(),
            "an `#[idempotent]` handler cannot be variadic",
        );
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => errors.error(
                receiver.span(),
                "an `#[idempotent]` handler cannot take `self`\naxum handlers are free functions or associated functions without a receiver",
            ),
            FnArg::Typed(typed) => {
                if contains_impl_trait(&typed.ty) {
                    errors.error(
                        typed.ty.span(),
                        "an `#[idempotent]` handler cannot take `impl Trait` arguments\nname the extractor type",
                    );
                }
            }
        }
    }
    if sig.inputs.len() > MAX_EXTRACTORS {
        errors.error(
            sig.inputs.span(),
            format!(
                "axum handlers take at most {MAX_EXTRACTORS} extractors; this one has {}",
                sig.inputs.len()
            ),
        );
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    ty.to_token_stream()
        .into_iter()
        .any(|t| matches!(&t, proc_macro2::TokenTree::Ident(i) if i == "impl"))
}

fn arg_types(func: &ItemFn) -> Vec<&Type> {
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

fn check_args_against_signature(args: &Args, func: &ItemFn, errors: &mut Errors) {
    if let Some(key) = &args.key
        && let KeyArg::Json(pointer) = &key.value
    {
        let last = arg_types(func).last().and_then(|ty| type_name(ty));
        if last.as_deref() != Some("Json") {
            errors.error(
                key.span,
                format!(
                    "`key = json(\"{pointer}\")` reads the key from a JSON body, but this handler has no `Json<_>` extractor\nadd a `Json<T>` argument last, or read the key from a header: `key = header(\"Name\")`"
                ),
            );
        }
    }
}

fn duration_tokens(d: std::time::Duration) -> TokenStream {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote!(::idempotent_runtime::__private::Duration::new(#secs, #nanos))
}

fn endpoint_tokens(args: &Args) -> TokenStream {
    let krate = quote!(::idempotent_runtime::__private);
    let mut fields = Vec::new();
    if let Some(ttl) = &args.ttl {
        let d = duration_tokens(ttl.value);
        fields.push(quote!(ttl: #krate::Some(#d)));
    }
    if let Some(lease) = &args.lease {
        let d = duration_tokens(lease.value);
        fields.push(quote!(lease: #krate::Some(#d)));
    }
    if let Some(key) = &args.key {
        let source = match &key.value {
            KeyArg::Header(name) => quote!(#krate::KeySource::Header(#name)),
            KeyArg::Query(name) => quote!(#krate::KeySource::Query(#name)),
            KeyArg::Json(pointer) => quote!(#krate::KeySource::Json(#pointer)),
            KeyArg::Body => quote!(#krate::KeySource::Body),
        };
        fields.push(quote!(key: #source));
    }
    if args.required.is_some() {
        fields.push(quote!(required: true));
    }
    if let Some(scope) = &args.scope {
        let ScopeArg::Header(name) = &scope.value;
        fields.push(quote!(scope: #krate::ScopeSource::Header(#name)));
    }
    if let Some(store) = &args.store {
        let classes = &store.value.classes;
        let codes = &store.value.codes;
        fields.push(quote!(policy: #krate::StatusPolicy::classes(&[#(#classes),*]).with_codes(&[#(#codes),*])));
    }
    if let Some(fp) = &args.fingerprint {
        let mode = match &fp.value {
            FingerprintArg::Body => quote!(#krate::FingerprintMode::Body { exclude: &[] }),
            FingerprintArg::None => quote!(#krate::FingerprintMode::None),
            FingerprintArg::Exclude(pointers) => {
                quote!(#krate::FingerprintMode::Body { exclude: &[#(#pointers),*] })
            }
        };
        fields.push(quote!(fingerprint: #mode));
    }
    quote!(#krate::Endpoint { #(#fields,)* ..#krate::Endpoint::DEFAULT })
}

/// Attributes that describe the function as an item stay on the outer function; the
/// rest (`#[tracing::instrument]` and the like) wrap the user's code inside.
fn is_item_attr(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    [
        "doc",
        "cfg",
        "cfg_attr",
        "allow",
        "warn",
        "deny",
        "forbid",
        "expect",
        "deprecated",
        "must_use",
    ]
    .iter()
    .any(|name| path.is_ident(name))
}

fn expand(args: &Args, mut func: ItemFn) -> TokenStream {
    let krate = quote!(::idempotent_runtime::__private);
    let (outer_attrs, inner_attrs): (Vec<_>, Vec<_>) = std::mem::take(&mut func.attrs)
        .into_iter()
        .partition(is_item_attr);
    let vis = std::mem::replace(&mut func.vis, syn::Visibility::Inherited);
    func.attrs = inner_attrs;
    let name = &func.sig.ident;

    let state = format_ident!("__S", span = Span::mixed_site());
    let via = format_ident!("__M", span = Span::mixed_site());
    let state_value = format_ident!("__state", span = Span::mixed_site());
    let request = format_ident!("__request", span = Span::mixed_site());
    let endpoint_static = format_ident!("__ENDPOINT", span = Span::mixed_site());

    let types = arg_types(&func);
    let (generics, handler_args, bounds) = match types.split_last() {
        None => (quote!(<#state>), quote!(((),)), Vec::new()),
        Some((last, parts)) => {
            let mut bounds: Vec<TokenStream> = parts
                .iter()
                .map(|ty| quote_spanned!(ty.span()=> #ty: #krate::FromRequestParts<#state> + #krate::Send))
                .collect();
            bounds.push(quote_spanned!(last.span()=> #last: #krate::FromRequest<#state, #via> + #krate::Send));
            (quote!(<#state, #via>), quote!((#via, #(#types,)*)), bounds)
        }
    };
    let endpoint = endpoint_tokens(args);
    let output_span = func.sig.output.span();
    let asyncness = &func.sig.asyncness;
    let fn_token = &func.sig.fn_token;
    let response = quote_spanned!(output_span=> #krate::Response);

    quote! {
        #(#outer_attrs)*
        #[allow(private_bounds, clippy::type_complexity)]
        #vis #asyncness #fn_token #name #generics(
            #krate::RouterState(#state_value): #krate::RouterState<#state>,
            #request: #krate::Request,
        ) -> #response
        where
            #state: #krate::IdempotencyState + #krate::Clone + #krate::Send + #krate::Sync + 'static,
            #(#bounds,)*
        {
            #func
            static #endpoint_static: #krate::Endpoint = #endpoint;
            #krate::run::<#state, _, #handler_args>(&#endpoint_static, #name, #request, #state_value).await
        }
    }
}
