//! Parsing the attribute's arguments.
//!
//! Every value is parsed and checked on its own here, at compile time, and every
//! mistake is collected so the user sees them all in one build. Checks that involve
//! more than one argument, or the handler's signature, are in `valid.rs`.

use std::time::Duration;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Ident, LitStr, Token, parenthesized};

/// Every argument, for "unknown argument" messages and suggestions.
const ARGUMENTS: &[&str] = &[
    "ttl",
    "lease",
    "key",
    "required",
    "scope",
    "store",
    "fingerprint",
    "crate",
];
/// The units named in duration messages, and every spelling humantime reads (but `M`,
/// months, which `duration` refuses as a likely `m`), plurals first, for suggestions.
const UNITS: &str = "units are `ms`, `s`, `m`, `h` and `d`";
const DURATION_UNITS: &[&str] = &[
    "ns", "nanos", "nsec", "us", "usec", "ms", "millis", "msec", "s", "seconds", "second", "secs",
    "sec", "m", "minutes", "minute", "mins", "min", "h", "hours", "hour", "hrs", "hr", "d", "days",
    "day", "w", "weeks", "week", "wks", "wk", "months", "month", "y", "years", "year", "yrs", "yr",
];
const KEY_SOURCES: &[&str] = &["header", "query", "json", "body"];

/// A value and the span of the tokens it came from.
pub(crate) struct Spanned<T> {
    pub(crate) span: Span,
    pub(crate) value: T,
}

pub(crate) enum KeyArg {
    // key = header | key = header("X-Request-Id")
    Header(String),
    // key = query("idempotency_key")
    Query(String),
    // key = json("/event/id")
    Json(String),
    // key = body
    Body,
}

pub(crate) enum ScopeArg {
    // scope = header("Authorization")
    Header(String),
    // scope = AuthUser
    Extractor(Box<syn::Type>),
}

pub(crate) enum FingerprintArg {
    // fingerprint = body
    Body,
    // fingerprint = none
    None,
    // fingerprint = exclude("/sent_at", "/nonce")
    Exclude(Vec<String>),
}

pub(crate) struct StoreArg {
    pub(crate) classes: Vec<u8>,
    pub(crate) codes: Vec<u16>,
}

#[derive(Default)]
pub(crate) struct Args {
    pub(crate) ttl: Option<Spanned<Duration>>,
    pub(crate) lease: Option<Spanned<Duration>>,
    pub(crate) key: Option<Spanned<KeyArg>>,
    pub(crate) required: Option<Spanned<()>>,
    pub(crate) scope: Option<Spanned<ScopeArg>>,
    pub(crate) store: Option<Spanned<StoreArg>>,
    pub(crate) fingerprint: Option<Spanned<FingerprintArg>>,
    pub(crate) krate: Option<Spanned<syn::Path>>,
    /// The arguments read so far, valid or not, to report a repeat of any of them.
    given: Vec<String>,
}

/// Collects errors instead of stopping at the first.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn error(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn finish(self) -> Option<syn::Error> {
        self.0
    }
}

impl Args {
    pub(crate) fn parse(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<Self> {
        let mut args = Args::default();
        let parser = syn::meta::parser(|meta| args.parse_one(&meta, errors));
        syn::parse::Parser::parse2(parser, input.parse()?)?;
        Ok(args)
    }

    fn parse_one(&mut self, meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<()> {
        let Some(ident) = meta.path.get_ident() else {
            errors.error(
                meta.path.span(),
                format!("unknown argument; expected one of {}", list(ARGUMENTS)),
            );
            return skip_value(meta);
        };
        let span = ident.span();
        let name = ident.to_string();
        if ARGUMENTS.contains(&name.as_str()) {
            if self.given.contains(&name) {
                errors.error(
                    span,
                    format!("`{name}` is given more than once\nremove this one or the first"),
                );
                return skip_value(meta);
            }
            self.given.push(name.clone());
        }
        match name.as_str() {
            // ttl = "24h"
            "ttl" => {
                if let Some(ttl) = duration(meta, "ttl", errors)? {
                    self.ttl = Some(Spanned { span, value: ttl });
                }
            }
            // lease = "30s"
            "lease" => {
                if let Some(lease) = duration(meta, "lease", errors)? {
                    self.lease = Some(Spanned { span, value: lease });
                }
            }
            // key = header | header("X-Request-Id") | query("k") | json("/event/id") | body
            "key" => {
                if let Some(key) = key_source(meta, errors)? {
                    self.key = Some(Spanned { span, value: key });
                }
            }
            // required
            "required" => {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    errors.error(
                        span,
                        "`required` takes no value\nwrite `required` to answer requests without a key with 400, or leave it out to let them through",
                    );
                    skip_value(meta)?;
                }
                self.required = Some(Spanned { span, value: () });
            }
            // scope = header("Authorization") | scope = AuthUser
            "scope" => {
                if let Some(scope) = scope(meta, errors)? {
                    self.scope = Some(Spanned { span, value: scope });
                }
            }
            // store = "2xx,4xx"
            "store" => {
                if let Some(store) = store_policy(meta, errors)? {
                    self.store = Some(Spanned { span, value: store });
                }
            }
            // fingerprint = body | none | exclude("/sent_at")
            "fingerprint" => {
                if let Some(fp) = fingerprint(meta, errors)? {
                    self.fingerprint = Some(Spanned { span, value: fp });
                }
            }
            // crate = "idem"
            "crate" => {
                if let Some(path) = crate_path(meta, errors)? {
                    self.krate = Some(Spanned { span, value: path });
                }
            }
            other => {
                let hint = match suggest(other, ARGUMENTS) {
                    Some(near) => format!("; did you mean `{near}`?"),
                    None => String::new(),
                };
                errors.error(
                    span,
                    format!(
                        "unknown argument `{other}`{hint}\nexpected one of {}",
                        list(ARGUMENTS)
                    ),
                );
                skip_value(meta)?;
            }
        }
        Ok(())
    }
}

/// Consumes the tokens up to the next argument.
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// Whether `= value` follows the argument; when it does not, reports `missing` at the
/// argument and skips what follows it instead.
fn has_value(
    meta: &ParseNestedMeta<'_>,
    errors: &mut Errors,
    missing: impl std::fmt::Display,
) -> syn::Result<bool> {
    if meta.input.peek(Token![=]) {
        return Ok(true);
    }
    errors.error(meta.path.span(), missing);
    skip_value(meta)?;
    Ok(false)
}

/// Consumes `= value` or `(...)` after an argument we are not going to use.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.input.parse::<Token![=]>()?;
        skip_to_comma(meta.input)?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

/// Reads `= "<duration>"`.
fn duration(
    meta: &ParseNestedMeta<'_>,
    name: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Duration>> {
    let example = if name == "ttl" { "24h" } else { "30s" };
    if !has_value(
        meta,
        errors,
        format!("`{name}` needs a value: `{name} = \"{example}\"`"),
    )? {
        return Ok(None);
    }
    meta.input.parse::<Token![=]>()?;
    if !meta.input.peek(syn::Lit) {
        errors.error(
            meta.input.span(),
            format!("`{name}` takes a duration string such as `{name} = \"{example}\"`"),
        );
        // The `=` is read already: skip the value itself, so that the arguments after it
        // are still checked.
        skip_to_comma(meta.input)?;
        return Ok(None);
    }
    let lit: syn::Lit = meta.input.parse()?;
    let checked = match &lit {
        syn::Lit::Str(s) => checked_duration(name, example, &s.value()),
        // `10` or `500ms`: the number with its unit (seconds when none), quoted, if the
        // attribute would take that.
        syn::Lit::Int(i) => {
            let unit = if i.suffix().is_empty() {
                "s"
            } else {
                i.suffix()
            };
            let fixed = format!("{}{unit}", i.base10_digits());
            Err(match checked_duration(name, example, &fixed) {
                Ok(_) => format!(
                    "`{name}` takes a duration string with a unit; did you mean `{name} = \"{fixed}\"`?"
                ),
                Err(_) if humantime::parse_duration(&fixed).is_err() => format!(
                    "`{name}` takes a duration string such as `{name} = \"{example}\"`\n{UNITS}"
                ),
                // Quoted, it would still be refused: say why.
                Err(problem) => format!("`{name}` takes a duration string; {problem}"),
            })
        }
        _ => Err(format!(
            "`{name}` takes a duration string such as `{name} = \"{example}\"`"
        )),
    };
    match checked {
        Ok(d) => Ok(Some(d)),
        Err(message) => {
            errors.error(lit.span(), message);
            Ok(None)
        }
    }
}

/// The duration `text` means, or why the attribute does not take it.
fn checked_duration(name: &str, example: &str, text: &str) -> Result<Duration, String> {
    if let Some(at) = months_unit(text) {
        let minutes = format!("{}m{}", &text[..at], &text[at + 1..]);
        return Err(format!(
            "in `{text}`, `M` is months, and minutes are `m`\nwrite `\"{minutes}\"` for minutes, or spell out `months` if months are meant"
        ));
    }
    match humantime::parse_duration(text) {
        // Stores keep time in whole milliseconds (Redis `PX`, for one).
        Ok(d) if d < Duration::from_millis(1) => {
            let problem = if !d.is_zero() {
                format!(
                    "`{name}` is shorter than a millisecond, the smallest duration a store keeps"
                )
            } else if name == "ttl" {
                "`ttl` must be longer than zero: a response kept for no time would never be replayed".to_owned()
            } else {
                format!(
                    "`{name}` must be longer than zero: a claim that expires at once would protect nothing"
                )
            };
            Err(format!(
                "{problem}\nwrite a duration such as `{name} = \"{example}\"`"
            ))
        }
        Ok(d) => Ok(d),
        Err(err) => {
            let trimmed = text.trim();
            Err(match err {
                _ if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) => {
                    format!(
                        "the duration `{trimmed}` has no unit; did you mean `\"{trimmed}s\"`?\n{UNITS}"
                    )
                }
                humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                    format!("in `{text}`, the number `{value}` has no unit\n{UNITS}")
                }
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    // A unit in the wrong case (`H`) is that unit; otherwise, since any
                    // one letter is near some unit, suggest only for longer words.
                    let lower = unit.to_ascii_lowercase();
                    let near = match DURATION_UNITS.iter().find(|u| **u == lower) {
                        Some(unit) => Some(*unit),
                        None if unit.len() > 2 => suggest(&unit, DURATION_UNITS),
                        None => None,
                    };
                    let hint = match near {
                        Some(near) => format!("; did you mean `{near}`?"),
                        None => String::new(),
                    };
                    format!("in `{text}`, `{unit}` is not a unit of time{hint}\n{UNITS}")
                }
                humantime::DurationError::NumberOverflow => format!(
                    "`{text}` is too long a duration, or too fine: the smallest unit is `ns`\nwrite a duration such as `\"{example}\"`"
                ),
                _ => format!(
                    "`{text}` is not a duration\nwrite it like `\"{example}\"`, `\"90s\"`, `\"500ms\"` or `\"1h 30m\"`"
                ),
            })
        }
    }
}

/// Where the first `M` unit in a duration is (`"5M"`, `"1h 5 M"`): humantime reads `M`
/// as months, which someone writing a TTL or a lease almost never means.
fn months_unit(text: &str) -> Option<usize> {
    text.match_indices('M').map(|(at, _)| at).find(|&at| {
        let number = text[..at].trim_end_matches(' ');
        let rest = &text[at + 1..];
        number.ends_with(|c: char| c.is_ascii_digit())
            && !rest.starts_with(|c: char| c.is_ascii_alphabetic())
    })
}

/// Reads `= "path"`: where the `idempotent-runtime` crate is, for a dependency renamed
/// or re-exported. The path's tokens carry the string's span, so a path that does not
/// resolve is reported there.
fn crate_path(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<syn::Path>> {
    const EXPECTED: &str = "`crate` takes the path of the `idempotent-runtime` crate as a string, for a dependency renamed or re-exported: `crate = \"idem\"`";
    if let Some(lit) = quoted(meta)? {
        return Ok(match lit.parse_with(syn::Path::parse_mod_style) {
            Ok(path) => Some(path),
            Err(_) => {
                errors.error(
                    lit.span(),
                    format!("`{}` is not a path\n{EXPECTED}", lit.value()),
                );
                None
            }
        });
    }
    let fork = meta.input.fork();
    let unquoted = fork
        .parse::<Token![=]>()
        .and_then(|_| fork.call(syn::Path::parse_mod_style));
    match unquoted {
        Ok(path) if fork.is_empty() || fork.peek(Token![,]) => {
            let written = quote::ToTokens::to_token_stream(&path)
                .to_string()
                .replace(' ', "");
            errors.push(syn::Error::new_spanned(
                &path,
                format!("quote the path: `crate = \"{written}\"`"),
            ));
        }
        _ => errors.error(meta.path.span(), EXPECTED),
    }
    skip_value(meta)?;
    Ok(None)
}

/// Reads `= "string"`, a value written in quotes where a word belongs; `None`, reading
/// nothing, when the value is not a string.
fn quoted(meta: &ParseNestedMeta<'_>) -> syn::Result<Option<LitStr>> {
    let fork = meta.input.fork();
    if fork.parse::<Token![=]>().is_err() || !fork.peek(LitStr) {
        return Ok(None);
    }
    meta.input.parse::<Token![=]>()?;
    meta.input.parse().map(Some)
}

/// The strings of `ident("a", "b")`, with the span of the parentheses.
type CallArgs = Option<(Span, Vec<LitStr>)>;

/// Reads `= ident` or `= ident("string", ...)`; returns the ident and the strings, or
/// `None` when the value has another shape, which is reported with `expected`, the
/// shapes `name` takes.
fn call(
    meta: &ParseNestedMeta<'_>,
    name: &str,
    expected: &str,
    errors: &mut Errors,
) -> syn::Result<Option<(Ident, CallArgs)>> {
    meta.input.parse::<Token![=]>()?;
    let Ok(ident) = meta.input.call(Ident::parse_any) else {
        errors.error(
            meta.input.span(),
            format!("`{name}` takes a word here\n{expected}"),
        );
        skip_to_comma(meta.input)?;
        return Ok(None);
    };
    let mut args = None;
    if meta.input.peek(syn::token::Paren) {
        let content;
        let paren = parenthesized!(content in meta.input);
        let tokens: proc_macro2::TokenStream = content.parse()?;
        match Punctuated::<LitStr, Token![,]>::parse_terminated.parse2(tokens.clone()) {
            Ok(lits) => args = Some((paren.span.join(), lits.into_iter().collect())),
            Err(_) => {
                let written = tokens.to_string().replace(' ', "");
                errors.error(
                    paren.span.join(),
                    format!(
                        "`{ident}` takes quoted strings; did you mean `{ident}(\"{written}\")`?"
                    ),
                );
                return Ok(None);
            }
        }
    }
    // `header "X-Request-Id"`, `json["/id"]`: something where the argument list goes on.
    if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        errors.error(
            meta.input.span(),
            format!("unexpected here: write the strings in parentheses, like `{ident}(\"..\")`\n{expected}"),
        );
        skip_to_comma(meta.input)?;
        return Ok(None);
    }
    Ok(Some((ident, args)))
}

/// One string argument: `name("value")`.
fn single(ident: &Ident, args: CallArgs, example: &str, errors: &mut Errors) -> Option<LitStr> {
    match args {
        Some((_, mut lits)) if lits.len() == 1 => lits.pop(),
        Some((span, _)) => {
            errors.error(
                span,
                format!("`{ident}` takes one string: `{ident}(\"{example}\")`"),
            );
            None
        }
        None => {
            errors.error(
                ident.span(),
                format!("`{ident}` needs an argument: `{ident}(\"{example}\")`"),
            );
            None
        }
    }
}

const KEY_EXPECTED: &str =
    "expected `header`, `header(\"Name\")`, `query(\"name\")`, `json(\"/pointer\")` or `body`";

fn key_source(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<KeyArg>> {
    if !has_value(
        meta,
        errors,
        "`key` needs a source: `key = header`, `key = header(\"X-Request-Id\")`, `key = query(\"name\")`, `key = json(\"/pointer\")` or `key = body`",
    )? {
        return Ok(None);
    }
    if let Some(lit) = quoted(meta)? {
        let value = lit.value();
        let fix = match value.as_str() {
            word if KEY_SOURCES.contains(&word) => format!("write `key = {word}`, without quotes"),
            "" => "for the `Idempotency-Key` header, write `key = header`".to_owned(),
            pointer if pointer.starts_with('/') => {
                format!("for a field of a JSON body, write `key = json(\"{pointer}\")`")
            }
            name => format!("for a header, write `key = header(\"{name}\")`"),
        };
        errors.error(
            lit.span(),
            format!("`key` takes a source, not a string\n{fix}"),
        );
        return Ok(None);
    }
    let Some((ident, args)) = call(meta, "key", KEY_EXPECTED, errors)? else {
        return Ok(None);
    };
    let key = match ident.to_string().as_str() {
        "header" => match args {
            None => Some(KeyArg::Header("idempotency-key".into())),
            Some(_) => single(&ident, args, "Idempotency-Key", errors)
                .and_then(|lit| header_name(&lit, errors))
                .map(KeyArg::Header),
        },
        "query" => single(&ident, args, "idempotency_key", errors).and_then(|lit| {
            if lit.value().is_empty() {
                errors.error(lit.span(), "the query parameter name is empty");
                None
            } else {
                Some(KeyArg::Query(lit.value()))
            }
        }),
        "json" => single(&ident, args, "/event/id", errors)
            .and_then(|lit| json_pointer(&lit, errors))
            .map(KeyArg::Json),
        "body" => {
            if let Some((span, _)) = args {
                errors.error(span, "`body` takes no argument: write `key = body`");
            }
            Some(KeyArg::Body)
        }
        other => {
            let hint = match suggest(other, KEY_SOURCES) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => String::new(),
            };
            errors.error(
                ident.span(),
                format!("unknown key source `{other}`{hint}\n{KEY_EXPECTED}"),
            );
            None
        }
    };
    Ok(key)
}

fn scope(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<ScopeArg>> {
    const EXPECTED: &str = "write `scope = header(\"Authorization\")` to scope by a request header, or `scope = AuthUser` to scope by an extractor that implements `idempotent_runtime::Scope`";
    if !has_value(meta, errors, format!("`scope` needs a source\n{EXPECTED}"))? {
        return Ok(None);
    }
    // `header` or `header(..)`, but not a type path such as `header::Tenant`
    let is_header = {
        let fork = meta.input.fork();
        fork.parse::<Token![=]>().is_ok()
            && fork
                .call(Ident::parse_any)
                .is_ok_and(|ident| ident == "header")
            && (fork.is_empty() || fork.peek(Token![,]) || fork.peek(syn::token::Paren))
    };
    if is_header {
        let Some((ident, args)) = call(meta, "scope", EXPECTED, errors)? else {
            return Ok(None);
        };
        return Ok(single(&ident, args, "Authorization", errors)
            .and_then(|lit| header_name(&lit, errors))
            .map(ScopeArg::Header));
    }
    meta.input.parse::<Token![=]>()?;
    let value_span = meta.input.span();
    let is_type = {
        let fork = meta.input.fork();
        matches!(fork.parse::<syn::Type>(), Ok(syn::Type::Path(_)))
            && (fork.is_empty() || fork.peek(Token![,]))
    };
    if is_type {
        return Ok(Some(ScopeArg::Extractor(Box::new(meta.input.parse()?))));
    }
    errors.error(
        value_span,
        format!("`scope` takes a header or an extractor type\n{EXPECTED}"),
    );
    skip_to_comma(meta.input)?;
    Ok(None)
}

const FINGERPRINT_EXPECTED: &str = "expected `body`, `none` or `exclude(\"/pointer\", ...)`";

fn fingerprint(
    meta: &ParseNestedMeta<'_>,
    errors: &mut Errors,
) -> syn::Result<Option<FingerprintArg>> {
    if !has_value(
        meta,
        errors,
        "`fingerprint` needs a value: `fingerprint = body`, `fingerprint = none` or `fingerprint = exclude(\"/pointer\")`",
    )? {
        return Ok(None);
    }
    if let Some(lit) = quoted(meta)? {
        let fix = match lit.value().as_str() {
            name @ ("body" | "none") => format!("write `fingerprint = {name}`, without quotes"),
            _ => "write `fingerprint = body`, `fingerprint = none` or `fingerprint = exclude(\"/pointer\")`".into(),
        };
        errors.error(
            lit.span(),
            format!("`fingerprint` takes a word, not a string\n{fix}"),
        );
        return Ok(None);
    }
    let Some((ident, args)) = call(meta, "fingerprint", FINGERPRINT_EXPECTED, errors)? else {
        return Ok(None);
    };
    Ok(match (ident.to_string().as_str(), args) {
        ("body", None) => Some(FingerprintArg::Body),
        ("none", None) => Some(FingerprintArg::None),
        ("exclude", Some((span, lits))) => {
            if lits.is_empty() {
                errors.error(
                    span,
                    "`exclude` needs at least one JSON pointer: `exclude(\"/sent_at\")`",
                );
                return Ok(None);
            }
            let pointers: Vec<String> = lits
                .iter()
                .filter_map(|lit| json_pointer(lit, errors))
                .collect();
            (pointers.len() == lits.len()).then_some(FingerprintArg::Exclude(pointers))
        }
        (name @ ("body" | "none"), Some((span, _))) => {
            errors.error(
                span,
                format!("`{name}` takes no argument: write `fingerprint = {name}`"),
            );
            None
        }
        ("exclude", None) => {
            errors.error(
                ident.span(),
                "`exclude` needs JSON pointers: `fingerprint = exclude(\"/sent_at\")`",
            );
            None
        }
        (other, _) => {
            let hint = match suggest(other, &["body", "none", "exclude"]) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => String::new(),
            };
            errors.error(
                ident.span(),
                format!("unknown fingerprint `{other}`{hint}\n{FINGERPRINT_EXPECTED}"),
            );
            None
        }
    })
}

fn store_policy(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<StoreArg>> {
    const EXAMPLE: &str = "like `store = \"2xx,409\"`";
    if !has_value(
        meta,
        errors,
        format!("`store` needs the statuses to keep, {EXAMPLE}"),
    )? {
        return Ok(None);
    }
    meta.input.parse::<Token![=]>()?;
    let lit = match meta.input.parse::<syn::Lit>() {
        Ok(syn::Lit::Str(lit)) => lit,
        // `2xx` is an integer with the suffix `xx`, `409` one without.
        Ok(syn::Lit::Int(int)) => {
            // `store = 2xx,4xx`: the list goes on with more integers.
            let mut written = vec![int.to_string()];
            loop {
                let fork = meta.input.fork();
                let next = fork
                    .parse::<Token![,]>()
                    .and_then(|_| fork.parse::<syn::LitInt>());
                match next {
                    Ok(more) if fork.is_empty() || fork.peek(Token![,]) => {
                        meta.input.parse::<Token![,]>()?;
                        meta.input.parse::<syn::LitInt>()?;
                        written.push(more.to_string());
                    }
                    _ => break,
                }
            }
            errors.error(
                int.span(),
                format!(
                    "`store` takes a string; did you mean `store = \"{}\"`?",
                    written.join(",")
                ),
            );
            return Ok(None);
        }
        parsed => {
            errors.error(
                meta.path.span(),
                format!("`store` takes a string of status classes and codes, {EXAMPLE}"),
            );
            if parsed.is_err() {
                skip_to_comma(meta.input)?;
            }
            return Ok(None);
        }
    };
    let mut store = StoreArg {
        classes: Vec::new(),
        codes: Vec::new(),
    };
    for part in lit.value().split(',').map(str::trim) {
        let bytes = part.as_bytes();
        let class = match bytes {
            [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Some(d - b'0'),
            _ => None,
        };
        match (class, part.parse::<u16>()) {
            (Some(class), _) => store.classes.push(class),
            (None, Ok(code)) if (100..=599).contains(&code) => store.codes.push(code),
            _ => {
                errors.error(
                    lit.span(),
                    format!("`{part}` is not a status class or code\nwrite classes `1xx` to `5xx` or codes from 100 to 599, separated by commas, like `store = \"2xx,4xx\"` or `store = \"2xx,409\"`"),
                );
                return Ok(None);
            }
        }
    }
    if !store.classes.contains(&2) && !store.codes.iter().any(|code| (200..300).contains(code)) {
        errors.error(
            lit.span(),
            format!("`store = \"{}\"` keeps no success: a 2xx answer would be released, and a retry would run the handler again\nthe list replaces the default `2xx`; add it, {EXAMPLE}", lit.value()),
        );
        return Ok(None);
    }
    Ok(Some(store))
}

/// Validates an HTTP header name and lowercases it.
fn header_name(lit: &LitStr, errors: &mut Errors) -> Option<String> {
    let name = lit.value();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Some(name.to_ascii_lowercase())
    } else {
        let fix = if name.contains(' ') {
            format!("did you mean `\"{}\"`?", name.trim().replace(' ', "-"))
        } else {
            "use letters, digits and `-`, like `\"X-Request-Id\"`".to_owned()
        };
        errors.error(
            lit.span(),
            format!("`{name}` is not a valid header name\n{fix}"),
        );
        None
    }
}

/// Validates an RFC 6901 JSON pointer.
fn json_pointer(lit: &LitStr, errors: &mut Errors) -> Option<String> {
    let pointer = lit.value();
    let problem = if pointer.is_empty() {
        Some(
            "the pointer is empty, which names the whole body; point at a field like `\"/event/id\"`",
        )
    } else if !pointer.starts_with('/') {
        Some("a JSON pointer starts with `/`")
    } else if pointer
        .match_indices('~')
        .any(|(i, _)| !matches!(pointer.as_bytes().get(i + 1), Some(b'0' | b'1')))
    {
        Some("in a JSON pointer `~` must be followed by `0` (for `~`) or `1` (for `/`)")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            let fix = if !pointer.is_empty() && !pointer.starts_with('/') {
                format!("; did you mean `\"/{}\"`?", pointer.replace('.', "/"))
            } else {
                String::new()
            };
            errors.error(
                lit.span(),
                format!("`{pointer}` is not a valid JSON pointer: {problem}{fix}"),
            );
            None
        }
        None => Some(pointer),
    }
}

fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

/// The closest valid name within two edits, if any.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.min(c.len() / 2 + 1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
