//! What identifies "the same request": a SHA-256 over the request body.
//!
//! JSON bodies (`Content-Type: application/json` or any `+json` type) are hashed in a
//! canonical form: object keys sorted, no insignificant whitespace. So
//! `{"a":1, "b":2}` and `{ "b": 2, "a": 1 }` are the same request, and a client library
//! that re-serialises its payload between retries is not mistaken for a different one.
//! Any other body, and a JSON body that does not parse, is hashed byte for byte.
//!
//! ```
//! use idempotent_runtime::Fingerprint;
//!
//! let a = Fingerprint::of_json_bytes(br#"{"a":1, "b":[true,null]}"#, &[]).unwrap();
//! let b = Fingerprint::of_json_bytes(br#"{ "b": [true, null], "a": 1 }"#, &[]).unwrap();
//! assert_eq!(a, b);
//! assert_ne!(a, Fingerprint::of_bytes(br#"{"a":1,"b":[true,null]}"#));
//! ```

use std::fmt;

use http::HeaderMap;
use serde_json::Value;
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

    /// The digest of a JSON value in canonical form (sorted keys, no whitespace).
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
        write_canonical(value, &mut canonical);
        Self(
            Sha256::new()
                .chain_update(b"json\0")
                .chain_update(&canonical)
                .finalize()
                .into(),
        )
    }

    /// The digest of a JSON document in canonical form, with the fields at the given
    /// JSON pointers left out; `None` if the bytes are not JSON.
    pub fn of_json_bytes(bytes: &[u8], exclude: &[&str]) -> Option<Self> {
        let mut value: Value = serde_json::from_slice(bytes).ok()?;
        for pointer in exclude {
            remove_pointer(&mut value, pointer);
        }
        Some(Self::of_json(&value))
    }

    /// The digest of a request body: canonical JSON when the `Content-Type` says JSON
    /// and the body parses, raw bytes otherwise.
    pub fn of_request(headers: &HeaderMap, body: &[u8], exclude: &[&str]) -> Self {
        if is_json(headers)
            && let Some(fingerprint) = Self::of_json_bytes(body, exclude)
        {
            return fingerprint;
        }
        Self::of_bytes(body)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Lowercase hex. Written out because formatting byte by byte through `core::fmt` was a
/// measurable part of every request (each one hexes a namespaced key).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Whether the request's `Content-Type` is JSON (`application/json` or `*/*+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(index) = last.parse::<usize>()
                && index < items.len()
            {
                items.remove(index);
            }
        }
        _ => {}
    }
}

/// Writes `value` with object keys sorted by their UTF-8 bytes and no whitespace.
/// Written out rather than relying on `serde_json::Map` ordering, which a
/// `preserve_order` feature elsewhere in the build would change.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a `str` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_key_order_do_not_matter() {
        let a = Fingerprint::of_json_bytes(br#"{"b":{"y":1,"x":[1,2]},"a":"s"}"#, &[]);
        let b = Fingerprint::of_json_bytes(
            b"{ \"a\" : \"s\",\n \"b\": {\"x\": [1, 2], \"y\": 1} }",
            &[],
        );
        assert_eq!(a, b);
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
}
