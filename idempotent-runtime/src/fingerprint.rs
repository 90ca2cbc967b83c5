//! What identifies "the same request": a SHA-256 over the request body (and, for an
//! `#[idempotent]` endpoint, its query parameters).
//!
//! JSON bodies (`Content-Type: application/json` or any `+json` type) are hashed in a
//! canonical form: object keys sorted, no insignificant whitespace. So
//! `{"a":1, "b":2}` and `{ "b": 2, "a": 1 }` are the same request, and a client library
//! that re-serialises its payload between retries is not mistaken for a different one.
//! Numbers count by value (`1.0`, `1.00` and `1e0` are the same; the integer `1` is
//! not) where an `f64` holds the value exactly: an integer of 64 bits, or a decimal of
//! at most 15 significant digits. Any other number counts by its digits as sent, so
//! that amounts an `f64` would round alike (`100000000000000000001` and
//! `100000000000000000002` wei) stay different requests. This holds whether or not the
//! build turns on `serde_json`'s `arbitrary_precision` feature.
//! Two other kinds of body that clients rebuild differently for the same request are
//! normalised too:
//!
//! - a form (`application/x-www-form-urlencoded`) is hashed as its parameters,
//!   percent-decoded and sorted by name (values of one name keep their order), as the
//!   query string is: `a=1&b=x+y` and `b=x%20y&a=1` are the same request;
//! - a `multipart/form-data` body is hashed without the delimiters between its parts,
//!   made of a boundary that clients draw at random for each form they build: the
//!   parts, their headers and their order count.
//!
//! Any other body, and a JSON body that does not parse, is hashed byte for byte. An
//! `#[idempotent]` endpoint folds the request's query parameters into this digest too.
//!
//! ```
//! use idempotent_runtime::Fingerprint;
//!
//! let a = Fingerprint::of_json_bytes(br#"{"a":1, "b":[true,null]}"#, &[]).unwrap();
//! let b = Fingerprint::of_json_bytes(br#"{ "b": [true, null], "a": 1 }"#, &[]).unwrap();
//! assert_eq!(a, b);
//! assert_ne!(a, Fingerprint::of_bytes(br#"{"a":1,"b":[true,null]}"#));
//! ```

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

use http::HeaderMap;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// A SHA-256 digest identifying a request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Wraps a digest read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest, to write into a store.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the 64-character lowercase hex form produced by `Display`.
    ///
    /// ```
    /// use idempotent_runtime::Fingerprint;
    ///
    /// let fp = Fingerprint::of_bytes(b"hello");
    /// assert_eq!(Fingerprint::from_hex(&fp.to_string()), Some(fp));
    /// assert_eq!(Fingerprint::from_hex("zz"), None);
    /// ```
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }

    /// The digest of raw bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(
            Sha256::new()
                .chain_update(b"raw\0")
                .chain_update(bytes)
                .finalize()
                .into(),
        )
    }

    /// The digest of a JSON value in canonical form (sorted keys, no whitespace). The
    /// same as [`of_json_bytes`](Self::of_json_bytes) of the value's text, except for
    /// the numbers a `Value` has already rounded.
    ///
    /// ```
    /// use idempotent_runtime::Fingerprint;
    /// use serde_json::json;
    ///
    /// assert_eq!(
    ///     Fingerprint::of_json(&json!({"x": 1, "y": 2})),
    ///     Fingerprint::of_json(&json!({"y": 2, "x": 1})),
    /// );
    /// ```
    pub fn of_json(value: &Value) -> Self {
        let mut canonical = Vec::with_capacity(128);
        Node::from(value).write(&mut canonical);
        Self::of_canonical(&canonical)
    }

    fn of_canonical(canonical: &[u8]) -> Self {
        Self(
            Sha256::new()
                .chain_update(b"json\0")
                .chain_update(canonical)
                .finalize()
                .into(),
        )
    }

    /// The digest of a JSON document in canonical form, with the fields at the given
    /// JSON pointers left out; `None` if the bytes are not JSON.
    pub fn of_json_bytes(bytes: &[u8], exclude: &[&str]) -> Option<Self> {
        if exclude.is_empty() && is_canonical(bytes) {
            return Some(Self::of_canonical(bytes));
        }
        let mut document = Node::parse(bytes)?;
        for pointer in exclude {
            document.remove(pointer);
        }
        let mut canonical = Vec::with_capacity(bytes.len());
        document.write(&mut canonical);
        Some(Self::of_canonical(&canonical))
    }

    /// The digest of a request body, by its `Content-Type`: canonical JSON when it is
    /// JSON and the body parses, the sorted parameters of a form, a multipart body
    /// without its boundary, raw bytes otherwise (see the [module docs](self)). The
    /// JSON pointers in `exclude` name fields of a JSON body, or, with one segment
    /// (`"/sent_at"`), parameters of a form.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use idempotent_runtime::Fingerprint;
    ///
    /// let mut form = HeaderMap::new();
    /// form.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    /// assert_eq!(
    ///     Fingerprint::of_request(&form, b"amount=10&note=a+gift", &[]),
    ///     Fingerprint::of_request(&form, b"note=a%20gift&amount=10", &[]),
    /// );
    /// ```
    pub fn of_request(headers: &HeaderMap, body: &[u8], exclude: &[&str]) -> Self {
        let content_type = content_type(headers);
        let kind = media_type(content_type);
        if is_json(kind) {
            if let Some(fingerprint) = Self::of_json_bytes(body, exclude) {
                return fingerprint;
            }
        } else if kind.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            if let Ok(form) = std::str::from_utf8(body) {
                return Self::of_form(form, exclude);
            }
        } else if kind.eq_ignore_ascii_case("multipart/form-data")
            && let Some(boundary) = boundary(content_type)
        {
            return Self::of_multipart(body, boundary.as_bytes());
        }
        Self::of_bytes(body)
    }

    /// A form's parameters, percent-decoded and sorted by name, those named by a
    /// one-segment pointer in `exclude` left out.
    fn of_form(form: &str, exclude: &[&str]) -> Self {
        // Unescaped once, not once per parameter.
        let excluded: Vec<String> = exclude
            .iter()
            .filter_map(|pointer| pointer.strip_prefix('/'))
            .filter(|segment| !segment.contains('/'))
            .map(unescape)
            .collect();
        let mut parameters: Vec<_> = crate::key::query_parameters(form)
            .filter(|(name, _)| !excluded.iter().any(|e| e.as_bytes() == name.as_slice()))
            .collect();
        let mut hasher = Sha256::new().chain_update(b"form\0");
        hash_parameters(&mut hasher, &mut parameters);
        Self(hasher.finalize().into())
    }

    /// A multipart body with its delimiters (`--boundary`, at the start of the body or
    /// after a line break) left out: the parts between them, in order. A part's content
    /// cannot hold a delimiter (RFC 2046), so different parts never hash the same.
    /// Whether the body opens with a delimiter or with a preamble is hashed first, as a
    /// byte of its own in either case: marking one case only, with a byte the other
    /// case's first length could begin with, let two bodies line up.
    fn of_multipart(body: &[u8], boundary: &[u8]) -> Self {
        let mut hasher = Sha256::new().chain_update(b"multipart\0");
        let delimiter = [b"\r\n--", boundary].concat();
        let mut rest = match body.strip_prefix(&delimiter[2..]) {
            Some(after) => {
                hasher.update(b"\0");
                after
            }
            None => {
                hasher.update(b"\x01");
                body
            }
        };
        let finder = memchr::memmem::Finder::new(&delimiter);
        loop {
            let found = finder.find(rest);
            let end = found.unwrap_or(rest.len());
            hasher.update((end as u64).to_be_bytes());
            hasher.update(&rest[..end]);
            match found {
                Some(at) => rest = &rest[at + delimiter.len()..],
                None => break,
            }
        }
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
        byte += 1;
    }
    pairs
};

/// Lowercase hex. Written out because formatting byte by byte through `core::fmt` was a
/// measurable part of every request (each one hexes a namespaced key): a digest is
/// turned into digit pairs on the stack, looked up a byte at a time, and copied once.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.chunks(32) {
        let mut digits = [[0; 2]; 32];
        for (pair, &byte) in digits.iter_mut().zip(chunk) {
            *pair = HEX_PAIRS[usize::from(byte)];
        }
        // Hex digits are ASCII, so this never falls back to the default.
        out.push_str(std::str::from_utf8(digits[..chunk.len()].as_flattened()).unwrap_or_default());
    }
    out
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Hashes `parameters` (percent-decoded names and values) sorted by name, the values of
/// one name in their order, each name and value prefixed with its length.
pub(crate) fn hash_parameters(hasher: &mut Sha256, parameters: &mut [(Vec<u8>, Vec<u8>)]) {
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in parameters.iter() {
        for part in [name, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
}

/// A JSON pointer's reference token with its `~1` and `~0` escapes undone.
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The request's `Content-Type`; empty when it is missing or not text.
fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The media type of a `Content-Type`, without its parameters.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// The `boundary` parameter of a multipart `Content-Type`, unquoted; `None` when it is
/// missing or empty. (RFC 2046 boundaries contain no `"` or `\`, so no escapes.)
fn boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (name.trim().eq_ignore_ascii_case("boundary") && !value.is_empty()).then_some(value)
    })
}

/// Whether a media type is JSON (`application/json` or `*/*+json`).
fn is_json(media_type: &str) -> bool {
    // Compared in place: lowercasing a copy cost an allocation on every request.
    let essence = media_type.as_bytes();
    let starts = |prefix: &str| {
        essence
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    let ends = |suffix: &str| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    essence.eq_ignore_ascii_case(b"application/json") || (starts("application/") && ends("+json"))
}

/// A JSON document as its fingerprint sees it: a `serde_json::Value`, except that a
/// number an `f64` cannot hold exactly keeps the digits it was sent with. Through a
/// `Value`, `100000000000000000001` and `100000000000000000002` (or two decimals that
/// differ past the 15th digit) read as the same `f64`, so a request with another amount
/// would have been taken for the same one and answered with its replay.
enum Node {
    Null,
    Bool(bool),
    /// What the canonical form writes: the number as `serde_json` writes its value when
    /// that value is exact, else `#` and the digits as sent, which no exact number
    /// writes (JSON has no `#` outside strings).
    Number(String),
    String(String),
    Array(Vec<Node>),
    /// Sorted by the keys' UTF-8 bytes, each key once (the last of a repeated one, as in
    /// a `Value`).
    Object(Vec<(String, Node)>),
}

impl Node {
    /// `None` if `bytes` is not one JSON document (nesting past `serde_json`'s limit
    /// included).
    fn parse(bytes: &[u8]) -> Option<Self> {
        let numbers = Numbers::new(bytes);
        let mut reader = serde_json::Deserializer::from_slice(bytes);
        let node = Read(&numbers).deserialize(&mut reader).ok()?;
        reader.end().ok()?;
        Some(node)
    }

    /// Leaves out what `pointer` names: an object's member is removed, an array's
    /// element is blanked to `null` (removing it would move the ones after it, and
    /// another excluded pointer into the same array would then name the wrong one).
    fn remove(&mut self, pointer: &str) {
        let Some((parent, last)) = pointer.rsplit_once('/') else {
            return;
        };
        let last = unescape(last);
        match self.find(parent) {
            Some(Self::Object(members)) => members.retain(|(key, _)| *key != last),
            Some(Self::Array(items)) => {
                if let Some(item) = array_index(&last).and_then(|i| items.get_mut(i)) {
                    *item = Self::Null;
                }
            }
            _ => {}
        }
    }

    /// What an RFC 6901 pointer names, as `serde_json::Value::pointer_mut` finds it.
    fn find(&mut self, pointer: &str) -> Option<&mut Self> {
        if pointer.is_empty() {
            return Some(self);
        }
        pointer
            .strip_prefix('/')?
            .split('/')
            .try_fold(self, |node, token| {
                let token = unescape(token);
                match node {
                    Self::Object(members) => members
                        .iter_mut()
                        .find(|(key, _)| *key == token)
                        .map(|(_, value)| value),
                    Self::Array(items) => array_index(&token).and_then(|i| items.get_mut(i)),
                    _ => None,
                }
            })
    }

    /// The canonical form: keys in order, no whitespace.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Null => out.extend_from_slice(b"null"),
            Self::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Self::Number(text) => out.extend_from_slice(text.as_bytes()),
            Self::String(s) => write_string(s, out),
            Self::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Self::Object(members) => {
                out.push(b'{');
                for (i, (key, item)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(key, out);
                    out.push(b':');
                    item.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

/// The numbers of a document, in order, as its text spells them. `serde_json` reads a
/// document front to back, so the next number it hands over is the next one here.
struct Numbers<'a> {
    bytes: &'a [u8],
    pos: Cell<usize>,
    /// Whether `serde_json` hands over numbers as maps (see [`PRIVATE_NUMBER`]).
    as_maps: bool,
}

impl<'a> Numbers<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: Cell::new(0),
            as_maps: numbers_as_maps(),
        }
    }

    /// The text of the next number, past strings (which may hold digits).
    fn next(&self) -> Option<&str> {
        let bytes = self.bytes;
        let mut at = self.pos.get();
        loop {
            match *bytes.get(at)? {
                b'"' => {
                    at += 1;
                    while *bytes.get(at)? != b'"' {
                        at += if bytes[at] == b'\\' { 2 } else { 1 };
                    }
                    at += 1;
                }
                b'-' | b'0'..=b'9' => break,
                _ => at += 1,
            }
        }
        let len = bytes[at..]
            .iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        self.pos.set(at + len);
        std::str::from_utf8(&bytes[at..at + len]).ok()
    }

    /// The canonical text of the next number, which `serde_json` read as `number`.
    fn canonical(&self, number: Number) -> Option<Node> {
        let text = self.next()?;
        Some(Node::Number(if is_exact(&number, text) {
            number.to_string()
        } else {
            format!("#{text}")
        }))
    }
}

/// The name under which `serde_json` built with its `arbitrary_precision` feature (which
/// any crate in the build can turn on, `rust_decimal`'s arbitrary-precision serde
/// support among them) hands a visitor each number that is not a 64-bit integer: a map
/// of one entry, from this name to the number's text. Such numbers are read back into
/// numbers, so that they count by value in either build.
const PRIVATE_NUMBER: &str = "$serde_json::private::Number";

/// Whether this build's `serde_json` hands over numbers as maps (see [`PRIVATE_NUMBER`]).
fn numbers_as_maps() -> bool {
    static AS_MAPS: OnceLock<bool> = OnceLock::new();
    // The same feature keeps a number's text: `0.50` stays `0.50`.
    *AS_MAPS.get_or_init(|| {
        serde_json::from_str::<Number>("0.50").is_ok_and(|n| n.to_string() == "0.50")
    })
}

/// The value of a number `serde_json` handed over as its text; `None` past `f64`.
fn number_from_text(text: &str) -> Option<Number> {
    text.parse().ok().and_then(Number::from_f64)
}

/// Whether `number`, read from `text`, is the value `text` spells: an integer that fits
/// 64 bits, zero, or a decimal of at most 15 significant digits (so that no two such
/// decimals share an `f64`) that is a normal `f64`, not rounded to zero or infinity
/// nor short of precision as a subnormal.
fn is_exact(number: &Number, text: &str) -> bool {
    if number.is_u64() || number.is_i64() {
        return true;
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    // From the first digit that is not zero to the last, the point left out.
    let (mut first, mut last) = (None, 0);
    for (i, digit) in mantissa.bytes().filter(u8::is_ascii_digit).enumerate() {
        if digit != b'0' {
            first.get_or_insert(i);
            last = i;
        }
    }
    let Some(first) = first else {
        return true;
    };
    last - first < 15 && number.as_f64().is_some_and(f64::is_normal)
}

/// Reads one [`Node`], taking the text of each number from [`Numbers`].
#[derive(Clone, Copy)]
struct Read<'n, 'a>(&'n Numbers<'a>);

impl<'de> DeserializeSeed<'de> for Read<'_, '_> {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Read<'_, '_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Bool(b))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Node, E> {
        self.number(n.into())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Node, E> {
        self.number(n.into())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Node, E> {
        // JSON has no NaN or infinity; a number past `f64` is an error already.
        self.number(Number::from_f64(n).ok_or_else(|| E::custom("not a JSON number"))?)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Node, E> {
        Ok(Node::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Node, E> {
        Ok(Node::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.is_empty() && self.0.as_maps && key == PRIVATE_NUMBER {
                let text: String = map.next_value()?;
                let number = number_from_text(&text)
                    .ok_or_else(|| de::Error::custom("a number past the range of an f64"))?;
                return self.number(number);
            }
            members.push((key, map.next_value_seed(self)?));
        }
        // Stable, so that of a repeated key the last comes last and is the one kept.
        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut unique: Vec<(String, Node)> = Vec::with_capacity(members.len());
        for member in members {
            match unique.last_mut() {
                Some(last) if last.0 == member.0 => *last = member,
                _ => unique.push(member),
            }
        }
        Ok(Node::Object(unique))
    }
}

impl Read<'_, '_> {
    fn number<E: de::Error>(self, number: Number) -> Result<Node, E> {
        self.0
            .canonical(number)
            .ok_or_else(|| E::custom("a number out of step with the text"))
    }
}

/// An array index as RFC 6901 writes it: digits, no sign, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    (digits && (token == "0" || !token.starts_with('0')))
        .then(|| token.parse().ok())
        .flatten()
}

/// A `Value`'s numbers are exact, or already rounded: they are written as they are.
impl From<&Value> for Node {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Number(n.to_string()),
            Value::String(s) => Self::String(s.clone()),
            Value::Array(items) => Self::Array(items.iter().map(Self::from).collect()),
            // Sorted here rather than trusting `serde_json::Map`'s order, which a
            // `preserve_order` feature elsewhere in the build would change.
            Value::Object(map) => {
                let mut members: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.into())).collect();
                members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                Self::Object(members)
            }
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a `str` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Whether `bytes` is already the canonical form of a JSON document, which is then hashed
/// as it is: most clients send compact JSON, and for a body in this form parsing the
/// document only to write the same bytes back was most of a replay's cost.
///
/// Conservative: `true` only for a document that [`Node::write`] would reproduce byte
/// for byte. That is no whitespace, object keys in strictly increasing byte order,
/// strings without escapes or control characters, integers of at most 18 digits (no
/// `-0`), and nesting well within `serde_json`'s limit. Anything else, valid or not, takes
/// the general path, which decides.
fn is_canonical(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut scan = Scan { bytes, pos: 0 };
    scan.value(0) && scan.pos == bytes.len()
}

/// Nesting past this takes the general path (`serde_json` stops at 128).
const MAX_DEPTH: u32 = 64;

struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.pos += usize::from(found);
        found
    }

    fn value(&mut self, depth: u32) -> bool {
        match self.peek() {
            Some(b'{') => depth < MAX_DEPTH && self.object(depth + 1),
            Some(b'[') => depth < MAX_DEPTH && self.array(depth + 1),
            Some(b'"') => self.string().is_some(),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.pos..].starts_with(word);
        self.pos += if found { word.len() } else { 0 };
        found
    }

    fn object(&mut self, depth: u32) -> bool {
        self.pos += 1;
        if self.eat(b'}') {
            return true;
        }
        let mut previous: Option<&'a [u8]> = None;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            if previous.is_some_and(|previous| previous >= key) {
                return false;
            }
            previous = Some(key);
            if !self.eat(b':') || !self.value(depth) {
                return false;
            }
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self, depth: u32) -> bool {
        self.pos += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    /// A string without escapes or control characters; its contents.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        self.pos = start + len;
        self.eat(b'"').then(|| &self.bytes[start..start + len])
    }

    /// An integer `serde_json` reads as `u64` or `i64` and writes back unchanged.
    fn integer(&mut self) -> bool {
        let negative = self.eat(b'-');
        let start = self.pos;
        let digits = self.bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.pos += digits;
        let leading_zero = self.bytes.get(start) == Some(&b'0');
        let well_formed = match (digits, leading_zero) {
            (0, _) => false,
            (1, true) => !negative,
            (_, true) => false,
            (n, false) => n <= 18,
        };
        // A fraction or an exponent: not an integer, the general path decides.
        well_formed && !matches!(self.peek(), Some(b'.' | b'e' | b'E'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_formatting_at_every_length_and_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 16, 31, 32, 33, 64, 100, 256] {
            let expected: String = bytes[..len].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex(&bytes[..len]), expected, "{len} bytes");
        }
    }

    #[test]
    fn whitespace_and_key_order_do_not_matter() {
        let a = Fingerprint::of_json_bytes(br#"{"b":{"y":1,"x":[1,2]},"a":"s"}"#, &[]);
        let b = Fingerprint::of_json_bytes(
            b"{ \"a\" : \"s\",\n \"b\": {\"x\": [1, 2], \"y\": 1} }",
            &[],
        );
        assert_eq!(a, b);
    }

    /// The digest through `serde_json::Value`, bypassing the canonical-input shortcut.
    fn through_value(bytes: &[u8]) -> Option<Fingerprint> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        Some(Fingerprint::of_json(&value))
    }

    #[test]
    fn canonical_input_hashes_as_if_reserialised() {
        let canonical: &[&[u8]] = &[
            br#"{"item":"widget","qty":1}"#,
            br#"{}"#,
            br#"[]"#,
            br#""""#,
            br#"0"#,
            br#"-7"#,
            br#"123456789012345678"#,
            br#"{"a":[true,false,null,{"b":"c"}],"b":{"":-1}}"#,
            "{\"caf\u{e9}\":\"\u{1F600} \u{7f}\"}".as_bytes(),
            br#"[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]"#,
        ];
        for bytes in canonical {
            let text = String::from_utf8_lossy(bytes);
            assert!(is_canonical(bytes), "{text} is canonical");
            assert_eq!(
                Fingerprint::of_json_bytes(bytes, &[]),
                through_value(bytes),
                "{text}"
            );
        }
    }

    #[test]
    fn anything_else_takes_the_general_path() {
        let general: &[&[u8]] = &[
            br#"{"qty":1,"item":"widget"}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"a": 1}"#,
            br#" {"a":1}"#,
            br#"{"a":1} "#,
            br#"{"a":"\u0041"}"#,
            br#"{"a":"line\nbreak"}"#,
            b"{\"a\":\"raw\ttab\"}",
            br#"1.0"#,
            br#"1e3"#,
            br#"-0"#,
            br#"01"#,
            br#"12345678901234567890"#,
            br#"-"#,
            br#"{"a":1,}"#,
            br#"[1,]"#,
            br#"{"a"}"#,
            br#"tru"#,
            br#"nul"#,
            b"{\"a\":\"\xff\"}",
            b"",
        ];
        for bytes in general {
            let text = String::from_utf8_lossy(bytes);
            assert!(!is_canonical(bytes), "{text} is not taken as canonical");
            assert_eq!(
                Fingerprint::of_json_bytes(bytes, &[]),
                through_value(bytes),
                "{text}"
            );
        }
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(!is_canonical(deep.as_bytes()));
        assert_eq!(Fingerprint::of_json_bytes(deep.as_bytes(), &[]), None);
    }

    /// Random documents, written canonically: whether or not the shortcut takes them,
    /// the digest is the one of their value.
    #[test]
    fn random_documents_agree_with_their_values() {
        fn next(state: &mut u64) -> u64 {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state
        }
        fn value(state: &mut u64, depth: u32) -> Value {
            const WORDS: [&str; 7] = ["", "a", "b", "ab", "caf\u{e9}", "q\"uote", "tab\t"];
            let word = |state: &mut u64| WORDS[(next(state) % 7) as usize].to_owned();
            match next(state) % if depth > 4 { 6 } else { 8 } {
                0 => Value::Null,
                1 => Value::Bool(next(state).is_multiple_of(2)),
                2 => Value::from(next(state) as i64 >> (next(state) % 64)),
                3 => Value::from(next(state) >> (next(state) % 64)),
                4 => Value::from((next(state) % 1000) as f64 / 8.0),
                5 => Value::String(word(state)),
                6 => (0..next(state) % 4)
                    .map(|_| value(state, depth + 1))
                    .collect(),
                _ => Value::Object(
                    (0..next(state) % 4)
                        .map(|_| (word(state), value(state, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1d;
        let mut shortcuts = 0;
        for _ in 0..5000 {
            let value = value(&mut state, 0);
            let mut bytes = Vec::new();
            Node::from(&value).write(&mut bytes);
            shortcuts += usize::from(is_canonical(&bytes));
            assert_eq!(
                Fingerprint::of_json_bytes(&bytes, &[]),
                Some(Fingerprint::of_json(&value)),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            // One byte changed: valid or not, canonical or not, the same as the value,
            // unless the change made a number that the value cannot hold.
            if !bytes.is_empty() {
                const BYTES: &[u8] = b"{}[]\",: \\-.e0123456789ntf";
                let at = (next(&mut state) % bytes.len() as u64) as usize;
                bytes[at] = BYTES[(next(&mut state) % BYTES.len() as u64) as usize];
                if !numbers_fit_a_value(&bytes) && through_value(&bytes).is_some() {
                    continue;
                }
                assert_eq!(
                    Fingerprint::of_json_bytes(&bytes, &[]),
                    through_value(&bytes),
                    "{}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        assert!(shortcuts > 1000, "the shortcut was taken {shortcuts} times");
    }

    /// Whether every number of `bytes` is one that a `Value` holds exactly, judged
    /// by the text alone: a 64-bit integer, or at most 15 digits and no exponent.
    fn numbers_fit_a_value(bytes: &[u8]) -> bool {
        let numbers = Numbers::new(bytes);
        std::iter::from_fn(|| numbers.next()).all(|text| {
            text.parse::<i64>().is_ok()
                || text.parse::<u64>().is_ok()
                || (!text.contains(['e', 'E'])
                    && text.bytes().filter(u8::is_ascii_digit).count() <= 15)
        })
    }

    /// A `serde_json` built with `arbitrary_precision` hands over each number that is
    /// not a 64-bit integer as a map of one entry to its text: it is read as the same
    /// number, not hashed as an object (a body with its keys reordered, which is not
    /// hashed as sent, would otherwise no longer be the same request).
    #[test]
    fn numbers_handed_over_as_text_are_numbers() {
        use serde::de::value::{Error, MapDeserializer};
        for text in [
            "10.5",
            "10.50",
            "1.05e1",
            "-0",
            "100000000000000000001",
            "0.1234567890123456789",
            "1e-400",
        ] {
            let numbers = Numbers {
                as_maps: true,
                ..Numbers::new(text.as_bytes())
            };
            let map = MapDeserializer::<_, Error>::new([(PRIVATE_NUMBER, text)].into_iter());
            let written = |node: Node| {
                let mut out = Vec::new();
                node.write(&mut out);
                String::from_utf8(out).unwrap()
            };
            let read = Read(&numbers).deserialize(map).unwrap();
            let parsed = Node::parse(text.as_bytes()).unwrap();
            assert_eq!(written(read), written(parsed), "{text}");
        }
        // In this build, such a map in a body is an object like any other.
        let literal = format!(r#"{{"{PRIVATE_NUMBER}":"10.5"}}"#);
        assert!(!numbers_as_maps());
        assert!(matches!(
            Node::parse(literal.as_bytes()),
            Some(Node::Object(_))
        ));
    }

    #[test]
    fn numbers_keep_the_digits_an_f64_would_lose() {
        let hash = |body: &str| Fingerprint::of_json_bytes(body.as_bytes(), &[]).unwrap();
        // Each pair is one `f64` apart from nothing: a `Value` reads both alike.
        for (a, b) in [
            ("100000000000000000001", "100000000000000000002"),
            ("-9223372036854775809", "-9223372036854775810"),
            ("18446744073709551616", "18446744073709551617"),
            ("1.000000000000000001", "1.000000000000000002"),
            ("0.1234567890123456789", "0.1234567890123456788"),
            ("1e-400", "0.0"),
            ("2.50000e-320", "2.50001e-320"),
        ] {
            let (a, b) = (
                format!(r#"{{"amount":{a}}}"#),
                format!(r#"{{"amount": {b}}}"#),
            );
            let value = through_value(a.as_bytes());
            assert_eq!(value, through_value(b.as_bytes()), "{a} and {b} as values");
            assert_ne!(hash(&a), hash(&b), "{a} and {b}");
        }
        // They are still read as JSON: whitespace and key order do not count.
        assert_eq!(
            hash(r#"{"to":"0xab","wei":100000000000000000001}"#),
            hash(r#"{ "wei": 100000000000000000001, "to": "0xab" }"#),
        );
        // Numbers an `f64` holds are compared by value, as before.
        for (a, b) in [
            ("1.0", "1.00"),
            ("1e2", "100.0"),
            ("100000000000000000000", "1e20"),
            ("0.1", "1E-1"),
            ("-0", "-0.0"),
            ("123456789012345.0", "1.23456789012345e14"),
            ("0.000000000000001", "1e-15"),
        ] {
            let (a, b) = (
                format!(r#"{{"amount":{a}}}"#),
                format!(r#"{{"amount": {b}}}"#),
            );
            assert_eq!(hash(&a), hash(&b), "{a} and {b}");
            assert_eq!(Some(hash(&b)), through_value(b.as_bytes()), "{b}");
        }
        // Digits inside strings are not numbers.
        assert_eq!(
            hash(r#"{"n":"1.5","m":100000000000000000001}"#),
            hash(r#"{"m":100000000000000000001, "n":"1.5"}"#),
        );
        assert_ne!(
            hash(r#"{"n":"\"1","m":100000000000000000001}"#),
            hash(r#"{"n":"\"1","m":100000000000000000002}"#),
        );
    }

    #[test]
    fn values_and_array_order_matter() {
        let a = Fingerprint::of_json_bytes(br#"{"a":[1,2]}"#, &[]);
        assert_ne!(a, Fingerprint::of_json_bytes(br#"{"a":[2,1]}"#, &[]));
        assert_ne!(a, Fingerprint::of_json_bytes(br#"{"a":[1,3]}"#, &[]));
        assert_ne!(a, Fingerprint::of_json_bytes(br#"{"a":"[1,2]"}"#, &[]));
    }

    #[test]
    fn excluded_fields_are_ignored() {
        let a = Fingerprint::of_json_bytes(
            br#"{"id":1,"meta":{"sent_at":"t1","n":2}}"#,
            &["/meta/sent_at"],
        );
        let b = Fingerprint::of_json_bytes(
            br#"{"id":1,"meta":{"sent_at":"t2","n":2}}"#,
            &["/meta/sent_at"],
        );
        assert_eq!(a, b);
        let c = Fingerprint::of_json_bytes(
            br#"{"id":1,"meta":{"sent_at":"t2","n":3}}"#,
            &["/meta/sent_at"],
        );
        assert_ne!(a, c);
    }

    #[test]
    fn excluded_array_elements_are_the_ones_named() {
        let exclude = &["/items/0", "/items/1"];
        let hash = |body: &str| Fingerprint::of_json_bytes(body.as_bytes(), exclude);
        let base = hash(r#"{"items":["a","b","c"]}"#);
        assert_eq!(base, hash(r#"{"items":["x","y","c"]}"#), "the two named");
        assert_ne!(base, hash(r#"{"items":["a","b","z"]}"#), "the third counts");
        assert_ne!(base, hash(r#"{"items":["a","b"]}"#), "so does the length");
        // Only RFC 6901 indices name an element.
        for pointer in ["/items/+1", "/items/01", "/items/-"] {
            let hash = |body: &str| Fingerprint::of_json_bytes(body.as_bytes(), &[pointer]);
            assert_ne!(
                hash(r#"{"items":["a","b"]}"#),
                hash(r#"{"items":["a","c"]}"#),
                "{pointer}"
            );
        }
    }

    #[test]
    fn json_content_types_are_recognised_in_any_case() {
        let is = |value: &str| is_json(media_type(content_type(&with_content_type(value))));
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
            "application/problem+json",
            "APPLICATION/VND.API+JSON",
        ] {
            assert!(is(json), "{json}");
        }
        for other in [
            "",
            "text/json",
            "application/jsonx",
            "application/json-seq",
            "text/plain+json",
            "application/x-www-form-urlencoded",
            "json",
        ] {
            assert!(!is(other), "{other}");
        }
        assert!(!is_json(media_type(content_type(&HeaderMap::new()))));
    }

    #[test]
    fn content_type_decides_json_handling() {
        let mut json = HeaderMap::new();
        json.insert(
            "content-type",
            "application/merchant+json; charset=utf-8".parse().unwrap(),
        );
        let plain = HeaderMap::new();
        assert_eq!(
            Fingerprint::of_request(&json, br#"{"a":1, "b":2}"#, &[]),
            Fingerprint::of_request(&json, br#"{"b":2,"a":1}"#, &[]),
        );
        assert_ne!(
            Fingerprint::of_request(&plain, br#"{"a":1, "b":2}"#, &[]),
            Fingerprint::of_request(&plain, br#"{"b":2,"a":1}"#, &[]),
        );
        // Not valid JSON: hashed as bytes, no panic.
        assert_eq!(
            Fingerprint::of_request(&json, b"{oops", &[]),
            Fingerprint::of_bytes(b"{oops")
        );
    }

    fn with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", value.parse().unwrap());
        headers
    }

    #[test]
    fn a_form_is_its_sorted_decoded_parameters() {
        let form = with_content_type("application/x-www-form-urlencoded; charset=utf-8");
        let of = |body: &str| Fingerprint::of_request(&form, body.as_bytes(), &[]);
        let original = of("amount=10&note=a+gift&tag=x&tag=y");
        assert_eq!(original, of("note=a%20gift&tag=x&amount=10&tag=y"));
        assert_eq!(original, of("tag=x&tag=y&note=a%20gift&amount=%31%30"));
        // Values, and the order of one name's values, still count.
        assert_ne!(original, of("amount=11&note=a+gift&tag=x&tag=y"));
        assert_ne!(original, of("amount=10&note=a+gift&tag=y&tag=x"));
        assert_ne!(original, of("amount=10&note=a+gift&tag=xtag=y"));
        assert_ne!(of("a=1"), Fingerprint::of_bytes(b"a=1"));
        // A one-segment pointer names a parameter; others name nothing in a form.
        let without =
            |body: &str, exclude: &[&str]| Fingerprint::of_request(&form, body.as_bytes(), exclude);
        assert_eq!(
            without("amount=10&sent_at=1", &["/sent_at"]),
            without("sent_at=2&amount=10", &["/sent_at"]),
        );
        assert_ne!(
            without("amount=10&sent_at=1", &["/x/sent_at"]),
            without("amount=10&sent_at=2", &["/x/sent_at"]),
        );
        // Not UTF-8: hashed as bytes, no panic.
        assert_eq!(
            Fingerprint::of_request(&form, b"a=\xff", &[]),
            Fingerprint::of_bytes(b"a=\xff")
        );
    }

    #[test]
    fn a_multipart_body_is_hashed_without_its_boundary() {
        let body = |boundary: &str, amount: &str| {
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n{amount}\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                 Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
            )
        };
        let of = |boundary: &str, amount: &str| {
            let headers = with_content_type(&format!("multipart/form-data; boundary={boundary}"));
            Fingerprint::of_request(&headers, body(boundary, amount).as_bytes(), &[])
        };
        let original = of("8c1fd3a0b2e4", "10");
        assert_eq!(original, of("X-BOUNDARY-77", "10"));
        let quoted = with_content_type("Multipart/Form-Data; charset=utf-8; Boundary=\"q 1\"");
        assert_eq!(
            original,
            Fingerprint::of_request(&quoted, body("q 1", "10").as_bytes(), &[])
        );
        assert_ne!(original, of("8c1fd3a0b2e4", "11"));
        // Only delimiters go: the boundary's text inside a value stays.
        assert_ne!(of("QQ", "1QQ0"), of("ZZ", "1ZZ0"));
        // Without a boundary parameter: hashed as bytes.
        let bare = with_content_type("multipart/form-data");
        let bytes = body("b", "10");
        assert_eq!(
            Fingerprint::of_request(&bare, bytes.as_bytes(), &[]),
            Fingerprint::of_bytes(bytes.as_bytes())
        );
    }

    /// A body that opens with a delimiter and one that does not (it has a preamble) are
    /// told apart before their parts, whose lengths could otherwise line up. The pair
    /// below hashed alike when only the first was marked: a part of 300 bytes against a
    /// part of 1 byte, `,`, and one of 292, the first part's last 292 bytes.
    #[test]
    fn a_multipart_preamble_never_hashes_as_a_part() {
        let headers = with_content_type("multipart/form-data; boundary=B");
        let tail = "a".repeat(292);
        let mut opening = b"--B".to_vec();
        opening.extend_from_slice(&292u64.to_be_bytes());
        opening.extend_from_slice(tail.as_bytes());
        let preamble = format!(",\r\n--B{tail}");
        assert_ne!(
            Fingerprint::of_request(&headers, &opening, &[]),
            Fingerprint::of_request(&headers, preamble.as_bytes(), &[])
        );
    }
}
