//! Where the idempotency key comes from, how it is validated, and how it is namespaced.
//!
//! # Accepted keys
//!
//! The `Idempotency-Key` header of the IETF draft is a Structured Field string: `"abc"`,
//! quoted, with `\"` and `\\` escapes. Most clients send the bare form (`abc`, a bare UUID),
//! so both are accepted and mean the same key. A key is rejected with `400` when it is
//! empty (`""` included), longer than [`MAX_KEY_LEN`] bytes once unquoted, contains a byte
//! outside visible ASCII (`!` to `~`), or is a malformed quoted string; and when a request
//! carries more than one key header, also when a proxy joined them into one line
//! (`a, b`: said so rather than "invalid key"). Structured Field parameters after a
//! quoted key (`"abc";v=1`) are allowed and ignored, as RFC 8941 has a recipient do
//! with parameters it does not know: the key is `abc`.
//!
//! ```
//! use idempotent_runtime::key::{KeyError, parse_key};
//!
//! assert_eq!(parse_key(b"8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
//! assert_eq!(parse_key(br#""abc""#).unwrap(), "abc");
//! assert_eq!(parse_key(br#""a\"b""#).unwrap(), r#"a"b"#);
//! assert_eq!(parse_key(br#""abc";v=1"#).unwrap(), "abc");
//! assert_eq!(parse_key(b"\"\""), Err(KeyError::Empty));
//! assert!(matches!(parse_key(b"with space"), Err(KeyError::InvalidByte { .. })));
//! ```
//!
//! # Namespace
//!
//! The stored key is a SHA-256 over (method, request path, scope, key), so the same key
//! sent to two endpoints, or by two tenants when the endpoint sets a `scope`, never
//! collides, and the raw key never reaches the store or this crate's logs. The path is
//! the request's, percent-encoding normalised as the router's path parameters see it:
//! `/orders/%61bc` is `/orders/abc` and `/customers/a%40b.com` is `/customers/a@b.com`
//! (the router gives each pair the same path parameter), `%2f` is `%2F`, and neither is
//! `/`. (A key read from the query string, `key = query(..)`, is in the
//! request line, which access logs and proxies record: prefer a header where the client
//! allows it.)

use std::borrow::Cow;
use std::fmt;

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The longest accepted key, in bytes, once unquoted.
pub const MAX_KEY_LEN: usize = 255;

/// The header read when an endpoint does not name one.
pub const DEFAULT_HEADER: &str = "idempotency-key";

/// Where an endpoint reads its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// A request header (lowercase name); `Idempotency-Key` by default.
    Header(&'static str),
    /// A query string parameter.
    Query(&'static str),
    /// A JSON pointer into the request body (`/event/id`).
    Json(&'static str),
    /// No client key: the request fingerprint is the key.
    Body,
}

impl Default for KeySource {
    fn default() -> Self {
        Self::Header(DEFAULT_HEADER)
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "the `{name}` header"),
            Self::Query(name) => write!(f, "the `{name}` query parameter"),
            Self::Json(pointer) => write!(f, "the body field at `{pointer}`"),
            Self::Body => f.write_str("the request body"),
        }
    }
}

/// Why a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty.
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    TooLong(usize),
    /// The key contains a byte outside visible ASCII.
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its position in the unquoted key.
        position: usize,
    },
    /// A quoted key is not a valid Structured Field string.
    MalformedQuoted,
    /// The request carries more than one key.
    Multiple,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the idempotency key is empty"),
            Self::TooLong(len) => write!(
                f,
                "the idempotency key is {len} bytes long; at most {MAX_KEY_LEN} are allowed"
            ),
            Self::InvalidByte { byte, position } => write!(
                f,
                "the idempotency key has byte 0x{byte:02x} at position {position}; only visible ASCII (`!` to `~`) is allowed"
            ),
            Self::MalformedQuoted => f.write_str(
                "the idempotency key starts with `\"` but is not a valid quoted string (only `\\\"` and `\\\\` escapes; after the closing quote, only parameters such as `;v=1`)",
            ),
            Self::Multiple => f.write_str("the request carries more than one idempotency key"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Parses one key, quoted or bare, and validates it.
pub fn parse_key(raw: &[u8]) -> Result<String, KeyError> {
    parse_key_in_place(raw).map(Cow::into_owned)
}

/// [`parse_key`] without a copy unless the key is quoted.
pub(crate) fn parse_key_in_place(raw: &[u8]) -> Result<Cow<'_, str>, KeyError> {
    let unquoted = match raw.first() {
        Some(b'"') => Cow::Owned(unquote(raw)?),
        _ => Cow::Borrowed(raw),
    };
    validate(&unquoted)?;
    // Visible ASCII is valid UTF-8.
    match unquoted {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes).map(Cow::Borrowed),
        Cow::Owned(bytes) => String::from_utf8(bytes)
            .map(Cow::Owned)
            .map_err(|e| e.utf8_error()),
    }
    .map_err(|_| KeyError::MalformedQuoted)
}

/// Checks a key as it is, unquoted already (or never quoted: one read from a JSON field
/// is a string, whose quotes are its own characters): 1 to 255 bytes of visible ASCII.
pub(crate) fn validate(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    if let Some(position) = key.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(KeyError::InvalidByte {
            byte: key[position],
            position,
        });
    }
    Ok(())
}

/// Reads the key from header `name`: `Ok(None)` when absent.
pub fn key_from_headers(headers: &HeaderMap, name: &str) -> Result<Option<String>, KeyError> {
    key_in_headers(headers, name).map(|key| key.map(Cow::into_owned))
}

/// [`key_from_headers`], borrowing the key from the header unless it is quoted.
pub(crate) fn key_in_headers<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<Cow<'a, str>>, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Multiple);
    }
    parse_key_in_place(first.as_bytes())
        .map(Some)
        .map_err(|err| match err {
            KeyError::InvalidByte { .. } | KeyError::MalformedQuoted
                if joined(first.as_bytes()) =>
            {
                KeyError::Multiple
            }
            err => err,
        })
}

/// Whether an invalid header value is two valid keys that a proxy joined into one line
/// (`a, b`, `"a", "b"`), as HTTP allows for repeated headers.
fn joined(value: &[u8]) -> bool {
    let keys = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
    value.contains(&b',') && keys.into_iter().all(|key| parse_key_in_place(key).is_ok())
}

/// Reads the key from query parameter `name`: `Ok(None)` when absent.
pub fn key_from_query(query: Option<&str>, name: &str) -> Result<Option<String>, KeyError> {
    let mut found = None;
    for (k, v) in query_parameters(query.unwrap_or("")) {
        if k != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Err(KeyError::Multiple);
        }
        found = Some(v);
    }
    found.map(|raw| parse_key(&raw)).transpose()
}

/// The parameters of a query string, names and values percent-decoded, in order.
pub(crate) fn query_parameters(query: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(decoded) = escaped(bytes, i) {
            out.push(decoded);
            i += 3;
            continue;
        }
        out.push(match bytes[i] {
            b'+' => b' ',
            b => b,
        });
        i += 1;
    }
    out
}

/// The byte that `bytes[i..]` escapes, when it starts with `%` and two hex digits.
fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    match *bytes.get(i..i + 3)? {
        [b'%', high, low] => Some(hex(high)? << 4 | hex(low)?),
        _ => None,
    }
}

/// `path` as a handler's path parameters see it: an escaped ASCII character decoded, but
/// for `%2F` and `%25`, which are kept escaped, as is every byte past ASCII, their hex
/// digits in upper case. So `/orders/%61bc` is `/orders/abc`, and
/// `/customers/a%40b.com` is `/customers/a@b.com`: one path parameter to the router,
/// which client libraries escape differently (`encodeURIComponent` escapes `@`, `:` and
/// `,`, Go's `PathEscape` does not), so a retry sent by another one still finds its
/// record. `%2F` stays apart from `/`, where a route may split the path differently,
/// and `%25` from `%`, which would otherwise make `%252F` a `%2F`. RFC 3986 keeps an
/// escaped reserved character apart from the character itself (6.2.2.2), for URI
/// schemes that give it a meaning; axum's path parameters do not. A `%` not followed by
/// two hex digits is kept as written. Borrowed when the path has no `%`, as most paths.
pub(crate) fn normalize_path(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Cow::Borrowed(path);
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        if let Some(decoded) = escaped(bytes, i) {
            if decoded.is_ascii() && decoded != b'/' && decoded != b'%' {
                out.push(decoded);
            } else {
                out.push(b'%');
                out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
            }
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    // ASCII was replaced by ASCII only, so `out` is as much UTF-8 as `path`.
    String::from_utf8(out).map_or(Cow::Borrowed(path), Cow::Owned)
}

/// A quoted key: a Structured Field string, then any parameters, which are not part of
/// the key.
fn unquote(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    let (key, rest) = string(raw).ok_or(KeyError::MalformedQuoted)?;
    if !parameters(rest) {
        return Err(KeyError::MalformedQuoted);
    }
    Ok(key)
}

/// A Structured Field string at the start of `raw` (RFC 8941 3.3.3): its unescaped
/// content and what follows its closing quote.
fn string(raw: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut bytes = raw.strip_prefix(b"\"")?.iter();
    let mut out = Vec::with_capacity(raw.len());
    loop {
        match *bytes.next()? {
            b'\\' => match bytes.next()? {
                &c @ (b'"' | b'\\') => out.push(c),
                _ => return None,
            },
            b'"' => return Some((out, bytes.as_slice())),
            b @ 0x20..=0x7e => out.push(b),
            _ => return None,
        }
    }
}

/// Whether `rest` is a list of Structured Field parameters (RFC 8941 3.1.2), like
/// `;v=1;tag`: a key of lowercase letters, digits and `_-.*`, and an optional value, a
/// string or a bare item (a token, a number, a byte sequence or a boolean).
fn parameters(mut rest: &[u8]) -> bool {
    while let Some(after) = rest.strip_prefix(b";") {
        rest = after.trim_ascii_start();
        if !matches!(rest.first(), Some(b'a'..=b'z' | b'*')) {
            return false;
        }
        let key = rest
            .iter()
            .position(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'))
            .unwrap_or(rest.len());
        rest = &rest[key..];
        let Some(value) = rest.strip_prefix(b"=") else {
            continue;
        };
        rest = if value.first() == Some(&b'"') {
            match string(value) {
                Some((_, after)) => after,
                None => return false,
            }
        } else {
            let len = value
                .iter()
                .position(|b| !b.is_ascii_graphic() || matches!(b, b';' | b',' | b'"' | b'\\'))
                .unwrap_or(value.len());
            if len == 0 {
                return false;
            }
            &value[len..]
        };
    }
    rest.is_empty()
}

/// The stored key: a hex SHA-256 over (method, path, scope, key), each length-prefixed
/// so that no two different tuples hash alike.
pub fn namespace(method: &str, path: &str, scope: Option<&str>, key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [method, path, scope.unwrap_or(""), key] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update([u8::from(scope.is_some())]);
    crate::fingerprint::hex(&hasher.finalize())
}

/// A deterministic key for one operation on one entity: for clients that must keep the
/// same key across their retries (and across restarts) without storing it, and for queue
/// consumers that turn an event into a key.
///
/// The key is 32 hex characters of a SHA-256 over the entity id, the action and the
/// parameters, each length-prefixed; parameters are sorted first, so their order does
/// not matter, but every name and value does.
///
/// ```
/// use idempotent_runtime::key::derive;
///
/// let a = derive("order-42", "refund", [("amount", "1000"), ("currency", "EUR")]);
/// let b = derive("order-42", "refund", [("currency", "EUR"), ("amount", "1000")]);
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 32);
/// assert_ne!(a, derive("order-42", "refund", [("amount", "999"), ("currency", "EUR")]));
/// assert_ne!(a, derive("order-42", "capture", [("amount", "1000"), ("currency", "EUR")]));
/// ```
pub fn derive<K: AsRef<str>, V: AsRef<str>>(
    entity: &str,
    action: &str,
    params: impl IntoIterator<Item = (K, V)>,
) -> String {
    let mut params: Vec<(K, V)> = params.into_iter().collect();
    params.sort_unstable_by(|a, b| (a.0.as_ref(), a.1.as_ref()).cmp(&(b.0.as_ref(), b.1.as_ref())));
    let mut hasher = Sha256::new();
    let mut part = |s: &str| {
        hasher.update((s.len() as u64).to_be_bytes());
        hasher.update(s.as_bytes());
    };
    part(entity);
    part(action);
    for (name, value) in &params {
        part(name.as_ref());
        part(value.as_ref());
    }
    crate::fingerprint::hex(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_quoted_are_the_same_key() {
        assert_eq!(parse_key(b"abc").unwrap(), parse_key(b"\"abc\"").unwrap());
        assert_eq!(parse_key(br#""a\\b""#).unwrap(), r"a\b");
    }

    #[test]
    fn parameters_after_a_quoted_key_are_not_part_of_it() {
        for raw in [
            r#""abc";v=1"#,
            r#""abc";tag"#,
            r#""abc";a=?1;b=token/x:y;c=-1.5"#,
            r#""abc"; s="x;\"y,z";*b=:cGFyYW0=:"#,
        ] {
            assert_eq!(parse_key(raw.as_bytes()).as_deref(), Ok("abc"), "{raw}");
        }
        // A bare key keeps what a client sent, as before.
        assert_eq!(parse_key(b"abc;v=1").as_deref(), Ok("abc;v=1"));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(parse_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_key(b"\"\""), Err(KeyError::Empty));
        assert_eq!(parse_key(&[b'a'; 256]), Err(KeyError::TooLong(256)));
        assert!(parse_key(&[b'a'; 255]).is_ok());
        // 255 bytes once unquoted is fine even though the header is longer.
        let mut quoted = vec![b'"'];
        quoted.extend([b'a'; 255]);
        quoted.push(b'"');
        assert!(parse_key(&quoted).is_ok());
        assert_eq!(parse_key(b"\"abc"), Err(KeyError::MalformedQuoted));
        assert_eq!(parse_key(b"\"a\"b\""), Err(KeyError::MalformedQuoted));
        for trailing in [
            ";", "; ", ";V=1", ";1a", ";a=", ";a=\"x", ";a=1 ;b", " ;a", ";a=1,",
        ] {
            let raw = format!("\"abc\"{trailing}");
            assert_eq!(
                parse_key(raw.as_bytes()),
                Err(KeyError::MalformedQuoted),
                "{raw}"
            );
        }
        assert_eq!(parse_key(br#""a\nb""#), Err(KeyError::MalformedQuoted));
        assert_eq!(
            parse_key(b"a\tb"),
            Err(KeyError::InvalidByte {
                byte: b'\t',
                position: 1
            })
        );
        assert_eq!(
            parse_key("caf\u{e9}".as_bytes()),
            Err(KeyError::InvalidByte {
                byte: 0xc3,
                position: 3
            })
        );
        // A quoted space is a valid sf-string but not a valid key.
        assert!(matches!(
            parse_key(b"\"a b\""),
            Err(KeyError::InvalidByte { .. })
        ));
    }

    #[test]
    fn more_than_one_header_is_an_error() {
        let mut headers = HeaderMap::new();
        headers.append("idempotency-key", "a".parse().unwrap());
        assert_eq!(
            key_from_headers(&headers, "idempotency-key"),
            Ok(Some("a".into()))
        );
        headers.append("idempotency-key", "b".parse().unwrap());
        assert_eq!(
            key_from_headers(&headers, "idempotency-key"),
            Err(KeyError::Multiple)
        );
        assert_eq!(key_from_headers(&headers, "x-other"), Ok(None));

        // Two headers a proxy joined into one line.
        let one = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", value.parse().unwrap());
            key_from_headers(&headers, "idempotency-key")
        };
        assert_eq!(one("a, b"), Err(KeyError::Multiple));
        assert_eq!(one(r#""a", "b""#), Err(KeyError::Multiple));
        assert_eq!(one(r#""a";v=1, "b""#), Err(KeyError::Multiple));
        // A comma is a visible character: a bare key may hold one.
        assert_eq!(one("a,b"), Ok(Some("a,b".into())));
        assert!(matches!(one("a b, c"), Err(KeyError::InvalidByte { .. })));
        // One key too long, commas or not.
        let long = format!("{},{}", "a".repeat(200), "b".repeat(200));
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", long.parse().unwrap());
        assert_eq!(
            key_from_headers(&headers, "idempotency-key"),
            Err(KeyError::TooLong(401))
        );
    }

    #[test]
    fn query_keys() {
        assert_eq!(
            key_from_query(Some("a=1&idempotency_key=k%2D1"), "idempotency_key"),
            Ok(Some("k-1".into()))
        );
        assert_eq!(key_from_query(Some("a=1"), "idempotency_key"), Ok(None));
        assert_eq!(key_from_query(None, "k"), Ok(None));
        assert_eq!(
            key_from_query(Some("k=1&k=2"), "k"),
            Err(KeyError::Multiple)
        );
        assert_eq!(key_from_query(Some("k="), "k"), Err(KeyError::Empty));
        assert_eq!(key_from_query(Some("k=%"), "k"), Ok(Some("%".into())));
        // `%` and two hex digits, no sign: otherwise kept as written (`+` is a space).
        let decoded: Vec<_> = query_parameters("k=%+41").collect();
        assert_eq!(decoded, [(b"k".to_vec(), b"% 41".to_vec())]);
    }

    #[test]
    fn derived_keys_are_valid_and_separate_every_part() {
        let key = derive("e", "a", [("p", "1")]);
        assert_eq!(parse_key(key.as_bytes()).as_deref(), Ok(key.as_str()));
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        // Length prefixes: moving a character between parts changes the key.
        assert_ne!(derive("ab", "c", [("", "")]), derive("a", "bc", [("", "")]));
        assert_ne!(
            derive("e", "a", [("p", "12")]),
            derive("e", "a", [("p1", "2")])
        );
        let none: [(&str, &str); 0] = [];
        assert_ne!(derive("e", "a", none), derive("e", "a", [("", "")]));
    }

    #[test]
    fn paths_are_normalised_as_path_parameters_see_them() {
        assert!(matches!(
            normalize_path("/orders/1"),
            Cow::Borrowed("/orders/1")
        ));
        // ASCII characters decoded, whatever the case of their escape.
        assert_eq!(
            normalize_path("/%6Frders/%41%7e%2D%2e%5f9"),
            "/orders/A~-._9"
        );
        assert_eq!(normalize_path("/a%40b%3a%2C%20c%3F"), "/a@b:, c?");
        // `%2F` is not `/`, nor `%25` a `%` (`%252F` would become `%2F`), nor is a
        // byte past ASCII decoded: kept, in upper case.
        assert_eq!(normalize_path("/a%2fb"), "/a%2Fb");
        assert_eq!(normalize_path("/a%252fb%25"), "/a%252fb%25");
        assert_ne!(normalize_path("/a%252Fb"), normalize_path("/a%2Fb"));
        assert_eq!(normalize_path("/caf%c3%a9"), "/caf%C3%A9");
        // A `%` without two hex digits after it is kept as written.
        assert_eq!(normalize_path("/100%"), "/100%");
        assert_eq!(normalize_path("/%4"), "/%4");
        assert_eq!(normalize_path("/%zz%41"), "/%zzA");
        assert_eq!(normalize_path("/%+41"), "/%+41");
        // Bytes that are not ASCII pass through.
        assert_eq!(normalize_path("/caf\u{e9}%41"), "/caf\u{e9}A");
    }

    #[test]
    fn namespace_separates_every_part() {
        let base = namespace("POST", "/orders", None, "k");
        assert_eq!(base.len(), 64);
        assert_ne!(base, namespace("PUT", "/orders", None, "k"));
        assert_ne!(base, namespace("POST", "/orders/1", None, "k"));
        assert_ne!(base, namespace("POST", "/orders", Some(""), "k"));
        assert_ne!(base, namespace("POST", "/orders", Some("t1"), "k"));
        assert_ne!(
            namespace("POST", "/a", Some("b"), "k"),
            namespace("POST", "/ab", Some(""), "k")
        );
    }
}
