//! Code generation.
//!
//! Input:
//!
//! ```text
//! #[idempotent(ttl = "24h", scope = AuthUser)]
//! pub async fn create(State(db): State<Db>, Json(order): Json<Order>) -> impl IntoResponse {
//!     body
//! }
//! ```
//!
//! Output (`__private` stands for `::idempotent_runtime::__private`, or the path given
//! with `crate = ".."`):
//!
//! ```text
//! pub async fn create<__IdempotentState, __IdempotentVia>(
//!     __private::RouterState(__idempotent_state): __private::RouterState<__IdempotentState>,
//!     __idempotent_request: __private::Request,
//! ) -> __private::Response
//! where
//!     __IdempotentState: __private::IdempotencyState + __private::Clone + __private::Send + __private::Sync + 'static,
//!     State<Db>: __private::PartsArgument<__IdempotentState> + __private::Send,
//!     Json<Order>: __private::FromRequest<__IdempotentState, __IdempotentVia> + __private::Send,
//!     AuthUser: __private::ScopeExtractor<__IdempotentState>,
//! {
//!     static __IDEMPOTENT_ENDPOINT: __private::Endpoint = __private::Endpoint {
//!         ttl: __private::Some(__private::Duration::new(86400, 0)),
//!         scope: __private::ScopeSource::Extractor,
//!         ..__private::Endpoint::DEFAULT
//!     };
//!     let __idempotent_handler = |__idempotent_arg0: State<Db>, __idempotent_arg1: Json<Order>| async move {
//!         let __idempotent_output = async move {
//!             let mut __idempotent_arg0 = __idempotent_arg0;
//!             let State(db) = __idempotent_arg0;
//!             let mut __idempotent_arg1 = __idempotent_arg1;
//!             let Json(order) = __idempotent_arg1;
//!             if false {
//!                 let __idempotent_ret: _ = loop {};   // the declared return type, `impl Trait` erased
//!                 return __idempotent_ret;
//!             }
//!             body
//!         }
//!         .await;
//!         let __idempotent_output = {
//!             fn __declared(__idempotent_value: impl IntoResponse) -> impl IntoResponse {
//!                 __idempotent_value
//!             }
//!             __declared(__idempotent_output)
//!         };
//!         __private::HandlerOutput::into_response(__idempotent_output)
//!     };
//!     __private::run_scoped::<__IdempotentState, _, (__IdempotentVia, State<Db>, Json<Order>), AuthUser>(
//!         &__IDEMPOTENT_ENDPOINT, __idempotent_handler, __idempotent_request, __idempotent_state,
//!     )
//!     .await
//! }
//! ```
//!
//! Without `scope = Type`, the last call is `__private::run::<__IdempotentState, _, (..)>(&__IDEMPOTENT_ENDPOINT,
//! __idempotent_handler, __idempotent_request, __idempotent_state, __private::None)`.
//!
//! `RouterState<S>` implements `FromRequestParts<S>` for exactly one `S`, which lets the
//! compiler infer the router state from the router the handler is added to, so the
//! handler works with any state and sub-state. The user's code becomes the body of a
//! closure that axum calls as a handler, so extraction and rejections behave exactly as
//! without the attribute, and `Self` still works in an `impl` block (a nested `fn` item
//! could not use it). The body's own future binds the user's patterns, as an `async fn`
//! does: every argument lives until the body ends and is dropped then, the last first,
//! before the response is built; `ref` patterns work.
//!
//! Where the user's code can be wrong, the generated tokens carry the span of the
//! user's token, so that the compiler's error points there:
//!
//! - the `where` bounds on each extractor are spanned at its type (the router state is
//!   only known where the handler is added to a router, so that is where an argument
//!   that is not an extractor is reported, with a note pointing at the argument); an
//!   argument before the last is bound through `PartsArgument`, whose error says that
//!   an extractor reading the body goes last, for the user's own extractors too;
//! - the `into_response` call is spanned at the return type;
//! - the scope type in the `run_scoped` turbofish is the user's own token, so a type
//!   that does not implement `Scope` is reported in the attribute; its extractor bound
//!   goes through `ScopeExtractor`, whose error names it as the scope;
//! - the "fake return" in the inner `async` block gives it the declared return type, so
//!   that `?` and type inference work as in the original `async fn` (tracing's
//!   `#[instrument]` does the same);
//! - with `impl Trait` in the return type, which the fake return erases to `_`, the
//!   value then passes through `__declared`, a `fn` with the declared return type: it
//!   checks the declared bounds and keeps the names in them used. (Left out when the
//!   type names `Self`, which a nested `fn` cannot use; `use<..>` is dropped there, as
//!   an argument cannot have it.)
//!
//! Internal bindings (`__idempotent_state`, `__idempotent_handler`, ...) use
//! `Span::mixed_site()`, so the user's code can neither see nor shadow them. Hygiene does
//! not stop a `const`, `static` or unit struct of the same name in scope from turning a
//! binding into a pattern, hence the long prefix on every binding. Nor does it cover
//! types, nor items: the generic parameters resolve where the user's types do, so they
//! have names no user type has (`__IdempotentState`, `__IdempotentVia`), not `S` or
//! `__S`, and the endpoint's `static`, which the body can see, is
//! `__IDEMPOTENT_ENDPOINT`, not a name a user's constant might have. Every
//! path starts at `__private`, so a user's `type Result<T> = ...` or `struct Request;`
//! cannot change what they mean. There are no sibling items, which would break inside an
//! `impl` block.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{AttrStyle, FnArg, Item, ItemFn, ReturnType, Type};

use crate::attr::{Args, Errors, FingerprintArg, KeyArg, ScopeArg};
use crate::valid;

/// The macro's entry point: parse, validate, generate.
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
    let func = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => func,
        Ok(other) => {
            let (span, what) = item_kind(&other);
            errors.error(
                span,
                format!("`#[idempotent]` applies to `async fn` handlers, not to {what}"),
            );
            return with_errors(item, errors.finish());
        }
        Err(err) => {
            errors.push(err);
            return with_errors(item, errors.finish());
        }
    };
    valid::check_signature(&func, &mut errors);
    if let Some(args) = &args {
        valid::check_args(args, &mut errors);
        valid::check_body_source(args, &func, &mut errors);
    }
    match (args, errors.finish()) {
        (Some(args), None) => expand(&args, func),
        (_, errors) => with_errors(func.into_token_stream(), errors),
    }
}

/// The errors, followed by the item as written so that no secondary errors
/// ("cannot find function") appear and IDEs keep working.
fn with_errors(item: TokenStream, errors: Option<syn::Error>) -> TokenStream {
    let errors = errors.map(|e| e.to_compile_error());
    quote! { #errors #item }
}

/// The keyword of an item that is not a function, and what to call it in a message.
fn item_kind(item: &Item) -> (Span, &'static str) {
    match item {
        Item::Const(i) => (i.const_token.span, "a `const`"),
        Item::Enum(i) => (i.enum_token.span, "an `enum`"),
        Item::ExternCrate(i) => (i.extern_token.span, "an `extern crate`"),
        Item::ForeignMod(i) => (i.abi.extern_token.span, "an `extern` block"),
        Item::Impl(i) => (
            i.impl_token.span,
            "an `impl` block; put it on a function inside",
        ),
        Item::Macro(i) => (i.mac.path.span(), "a macro invocation"),
        Item::Mod(i) => (i.mod_token.span, "a module"),
        Item::Static(i) => (i.static_token.span, "a `static`"),
        Item::Struct(i) => (i.struct_token.span, "a `struct`"),
        Item::Trait(i) => (i.trait_token.span, "a trait"),
        Item::TraitAlias(i) => (i.trait_token.span, "a trait alias"),
        Item::Type(i) => (i.type_token.span, "a type alias"),
        Item::Union(i) => (i.union_token.span, "a `union`"),
        Item::Use(i) => (i.use_token.span, "a `use`"),
        other => (
            other
                .to_token_stream()
                .into_iter()
                .next()
                .map_or_else(Span::call_site, |t| t.span()),
            "this item; it needs a body",
        ),
    }
}

/// Where the generated code finds the runtime: `::idempotent_runtime`, or the path
/// given with `crate = ".."`.
struct Runtime(Option<syn::Path>);

impl Runtime {
    /// `<runtime>::__private`, reported at `span` but marked as the macro's own tokens,
    /// so that lints (clippy's in particular) do not take them for the user's code.
    fn private_at(&self, span: Span) -> TokenStream {
        let span = Span::mixed_site().located_at(span);
        match &self.0 {
            None => quote_spanned!(span=> ::idempotent_runtime::__private),
            Some(path) => {
                let path = respan(path.to_token_stream(), &|_| span);
                quote_spanned!(span=> #path::__private)
            }
        }
    }

    /// `<runtime>::__private` where nothing of the user's is to blame: at the attribute,
    /// or, for a path given with `crate`, at the string it was written in, so that a
    /// path that does not resolve is reported there (and also at the types whose bounds
    /// use it, which keep their own spans for the errors that matter more often).
    fn private(&self) -> TokenStream {
        match &self.0 {
            None => self.private_at(Span::call_site()),
            Some(path) => self.private_at(path.span()),
        }
    }
}

fn duration_tokens(runtime: &Runtime, d: std::time::Duration) -> TokenStream {
    let private = runtime.private();
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote!(#private::Duration::new(#secs, #nanos))
}

/// The endpoint's settings; what the attribute leaves out is `Endpoint::DEFAULT`.
fn endpoint_tokens(runtime: &Runtime, args: &Args) -> TokenStream {
    let private = runtime.private();
    let mut fields = Vec::new();
    if let Some(ttl) = &args.ttl {
        let d = duration_tokens(runtime, ttl.value);
        fields.push(quote!(ttl: #private::Some(#d)));
    }
    if let Some(lease) = &args.lease {
        let d = duration_tokens(runtime, lease.value);
        fields.push(quote!(lease: #private::Some(#d)));
    }
    if let Some(key) = &args.key {
        let source = match &key.value {
            KeyArg::Header(name) => quote!(#private::KeySource::Header(#name)),
            KeyArg::Query(name) => quote!(#private::KeySource::Query(#name)),
            KeyArg::Json(pointer) => quote!(#private::KeySource::Json(#pointer)),
            KeyArg::Body => quote!(#private::KeySource::Body),
        };
        fields.push(quote!(key: #source));
    }
    if args.required.is_some() {
        fields.push(quote!(required: true));
    }
    if let Some(scope) = &args.scope {
        let source = match &scope.value {
            ScopeArg::Header(name) => quote!(#private::ScopeSource::Header(#name)),
            ScopeArg::Extractor(_) => quote!(#private::ScopeSource::Extractor),
        };
        fields.push(quote!(scope: #source));
    }
    if let Some(store) = &args.store {
        let classes = &store.value.classes;
        let codes = &store.value.codes;
        fields.push(quote!(policy: #private::StatusPolicy::classes(&[#(#classes),*]).with_codes(&[#(#codes),*])));
    }
    if let Some(fp) = &args.fingerprint {
        let mode = match &fp.value {
            FingerprintArg::Body => quote!(#private::FingerprintMode::Body { exclude: &[] }),
            FingerprintArg::None => quote!(#private::FingerprintMode::None),
            FingerprintArg::Exclude(pointers) => {
                quote!(#private::FingerprintMode::Body { exclude: &[#(#pointers),*] })
            }
        };
        fields.push(quote!(fingerprint: #mode));
    }
    quote!(#private::Endpoint { #(#fields,)* ..#private::Endpoint::DEFAULT })
}

/// Replaces every `impl Trait` in a type with `_`, for the fake return: the concrete
/// type is then inferred from the body, as it is for the original `async fn`.
#[derive(Default)]
struct EraseImplTrait {
    erased: bool,
}

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(impl_trait) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](impl_trait.impl_token.span),
            });
            self.erased = true;
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

/// Drops `use<..>` from every `impl Trait`, for `__declared`: an argument's `impl Trait`
/// cannot have it, and the returned one must then name the argument's type in it. It
/// names no trait, so nothing is lost for the check.
struct WithoutPreciseCapture;

impl VisitMut for WithoutPreciseCapture {
    fn visit_type_impl_trait_mut(&mut self, impl_trait: &mut syn::TypeImplTrait) {
        impl_trait.bounds = std::mem::take(&mut impl_trait.bounds)
            .into_iter()
            .filter(|bound| !matches!(bound, syn::TypeParamBound::PreciseCapture(_)))
            .collect();
        syn::visit_mut::visit_type_impl_trait_mut(self, impl_trait);
    }
}

/// Whether the tokens name `Self`, which a nested `fn` item cannot use.
fn mentions_self(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|token| match token {
        proc_macro2::TokenTree::Ident(ident) => ident == "Self",
        proc_macro2::TokenTree::Group(group) => mentions_self(group.stream()),
        _ => false,
    })
}

fn expand(args: &Args, func: ItemFn) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    // The block's inner attributes (`#![allow(..)]`) are parsed into `attrs`; they
    // apply to the whole function either way, so all of them go on the function.
    let attrs = attrs.into_iter().map(|mut attr| {
        attr.style = AttrStyle::Outer;
        attr
    });
    let name = &sig.ident;
    let mixed = |name: &str| format_ident!("{}", name, span = Span::mixed_site());
    let state = mixed("__IdempotentState");
    let via = mixed("__IdempotentVia");
    let state_value = mixed("__idempotent_state");
    let request = mixed("__idempotent_request");
    let handler = mixed("__idempotent_handler");
    let output = mixed("__idempotent_output");
    let ret = mixed("__idempotent_ret");
    let endpoint_static = mixed("__IDEMPOTENT_ENDPOINT");
    let runtime = Runtime(args.krate.as_ref().map(|krate| krate.value.clone()));
    let private = runtime.private();

    // One `where` bound per extractor, spanned at its type.
    let params: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let types: Vec<&Type> = params.iter().map(|p| &*p.ty).collect();
    let mut bounds: Vec<TokenStream> = Vec::new();
    let (generics, handler_args) = match types.split_last() {
        None => (quote!(<#state>), quote!(((),))),
        Some((last, parts)) => {
            for ty in parts {
                let private = runtime.private_at(ty.span());
                bounds.push(quote_spanned!(Span::mixed_site().located_at(ty.span())=>
                    #ty: #private::PartsArgument<#state> + #private::Send
                ));
            }
            let private_last = runtime.private_at(last.span());
            bounds.push(quote_spanned!(Span::mixed_site().located_at(last.span())=>
                #last: #private_last::FromRequest<#state, #via> + #private_last::Send
            ));
            (quote!(<#state, #via>), quote!((#via, #(#types,)*)))
        }
    };
    let scope_type = args.scope.as_ref().and_then(|scope| match &scope.value {
        ScopeArg::Extractor(ty) => Some(ty),
        ScopeArg::Header(_) => None,
    });
    if let Some(ty) = scope_type {
        let private = runtime.private_at(ty.span());
        bounds.push(quote_spanned!(Span::mixed_site().located_at(ty.span())=>
            #ty: #private::ScopeExtractor<#state>
        ));
    }

    // The user's code, typed by its declared return type.
    // With `impl Trait` erased, the declared type would otherwise appear nowhere (and
    // its imports would count as unused): the value passes through a `fn` that returns
    // it as declared, which also checks it against the declared bounds.
    let (output_span, return_type, declared) = match &sig.output {
        ReturnType::Default => (sig.ident.span(), quote!(()), None),
        ReturnType::Type(_, ty) => {
            let mut erased = (**ty).clone();
            let mut eraser = EraseImplTrait::default();
            eraser.visit_type_mut(&mut erased);
            let declared = (eraser.erased && !mentions_self(ty.to_token_stream())).then(|| {
                let declared = mixed("__declared");
                let value = mixed("__idempotent_value");
                let mut ty = (**ty).clone();
                WithoutPreciseCapture.visit_type_mut(&mut ty);
                quote! {
                    let #output = {
                        fn #declared(#value: #ty) -> #ty {
                            #value
                        }
                        #declared(#output)
                    };
                }
            });
            (ty.span(), erased.into_token_stream(), declared)
        }
    };
    let private_output = runtime.private_at(output_span);
    let output_at_type = format_ident!(
        "__idempotent_output",
        span = Span::mixed_site().located_at(output_span)
    );
    let into_response = quote_spanned!(Span::mixed_site().located_at(output_span)=>
        #private_output::HandlerOutput::into_response(#output_at_type)
    );
    let stmts = &block.stmts;
    // At the function's name: where a future that is not `Send` is reported.
    let private_name = runtime.private_at(sig.ident.span());
    let handler_future = quote_spanned!(Span::mixed_site().located_at(sig.ident.span())=>
        #private_name::handler_future
    );
    // The closure takes each argument whole and the body's future binds the user's
    // patterns, as an `async fn` does: every argument moves into that future, so one the
    // body never names (`_permit`, a guard) lives until the body ends and is dropped
    // with the others when it does, in the same order, before the response is built;
    // and a `ref` pattern borrows from the future, not from the closure that returns it.
    let arguments: Vec<_> = (0..params.len())
        .map(|i| mixed(&format!("__idempotent_arg{i}")))
        .collect();
    let bind_arguments = params.iter().zip(&arguments).map(|(param, arg)| {
        let (attrs, pat) = (&param.attrs, &param.pat);
        // `mut`, as in rustc's own lowering: the pattern may bind `ref mut`.
        quote! {
            #[allow(unused_mut)]
            let mut #arg = #arg;
            #(#attrs)*
            let #pat = #arg;
        }
    });
    let endpoint = endpoint_tokens(&runtime, args);
    let run = match scope_type {
        None => quote! {
            #private::run::<#state, _, #handler_args>(
                &#endpoint_static, #handler, #request, #state_value, #private::None,
            )
            .await
        },
        // Spanned at the scope type: a type that is not a `Scope` is reported there.
        Some(ty) => {
            let span = Span::mixed_site().located_at(ty.span());
            let private = runtime.private_at(ty.span());
            // One context for every token of the call, so that the compiler reports the
            // missing `Scope` once, not once per token context.
            let ty = respan(ty.to_token_stream(), &|span| {
                Span::mixed_site().located_at(span)
            });
            quote_spanned! {span=>
                #private::run_scoped::<#state, _, #handler_args, #ty>(
                    &#endpoint_static, #handler, #request, #state_value,
                )
                .await
            }
        }
    };
    let asyncness = &sig.asyncness;
    let fn_token = &sig.fn_token;

    quote! {
        #(#attrs)*
        #[allow(private_bounds)]
        #vis #asyncness #fn_token #name #generics(
            #private::RouterState(#state_value): #private::RouterState<#state>,
            #request: #private::Request,
        ) -> #private::Response
        where
            #state: #private::IdempotencyState + #private::Clone + #private::Send + #private::Sync + 'static,
            #(#bounds,)*
        {
            static #endpoint_static: #private::Endpoint = #endpoint;
            let #handler = |#(#arguments: #types),*| #handler_future(async move {
                let #output = async move {
                    #(#bind_arguments)*
                    #[allow(
                        unknown_lints,
                        unreachable_code,
                        clippy::diverging_sub_expression,
                        clippy::empty_loop,
                        clippy::let_unit_value,
                        clippy::let_with_type_underscore,
                        clippy::needless_return,
                        clippy::unreachable
                    )]
                    if false {
                        let #ret: #return_type = loop {};
                        return #ret;
                    }
                    #(#stmts)*
                }
                .await;
                #declared
                #into_response
            });
            #run
        }
    }
}

/// The same tokens, groups included, each given `span_for` of its own span: the
/// hygiene of `Span::mixed_site()` at its own location, say, or one place for all.
/// Paths in them still resolve where the user wrote them: only local variables and
/// labels resolve differently under `mixed_site`, and a type or path has neither.
fn respan(tokens: TokenStream, span_for: &impl Fn(Span) -> Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            let span = span_for(token.span());
            if let proc_macro2::TokenTree::Group(group) = &token {
                let inner = respan(group.stream(), span_for);
                token = proc_macro2::Group::new(group.delimiter(), inner).into();
            }
            token.set_span(span);
            token
        })
        .collect()
}
