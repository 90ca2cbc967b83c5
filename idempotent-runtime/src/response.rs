//! Capturing a handler's response and replaying it.
//!
//! A stored response keeps the status (a `201` stays a `201`), the headers and the body
//! byte for byte. Headers that describe one connection or one caller are never stored:
//! the hop-by-hop headers of RFC 9110 (`Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Authorization`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`), `Content-Length` (recomputed on replay) and
//! `Set-Cookie` (a session cookie must not reach whoever retries). Repeated headers and
//! non-UTF-8 values are kept as they are. A replay carries `Idempotent-Replayed: true`.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// The header added to every replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// [`REPLAYED_HEADER`], parsed once.
const REPLAYED: HeaderName = HeaderName::from_static(REPLAYED_HEADER);

/// A `static`, not a `const`: a `const` array of header names is built and dropped
/// again at every use.
static NEVER_STORED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::SET_COOKIE,
];

/// What tells a client how to read the body: always stored, whatever the choice.
static ALWAYS_STORED: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// Which of a handler's headers are stored and replayed.
///
/// Whatever the choice, the hop-by-hop headers (with those a `Connection` header names),
/// `Content-Length` and `Set-Cookie` are never stored, and `Content-Type`,
/// `Content-Encoding` and `Content-Range` always are: a replay without them would hand
/// the client the same bytes to read as something else (gzip as text, a part as the whole).
/// Set it app-wide with [`Idempotency::with_stored_headers`](crate::Idempotency::with_stored_headers).
///
/// ```
/// use http::{HeaderName, header};
/// use idempotent_runtime::response::StoredHeaders;
///
/// let only = StoredHeaders::only([header::LOCATION]);
/// assert!(only.keeps(&header::LOCATION));
/// assert!(only.keeps(&header::CONTENT_TYPE));
/// assert!(only.keeps(&header::CONTENT_ENCODING));
/// assert!(!only.keeps(&HeaderName::from_static("x-request-id")));
///
/// let except = StoredHeaders::except([HeaderName::from_static("x-request-id"), header::CONTENT_TYPE]);
/// assert!(!except.keeps(&HeaderName::from_static("x-request-id")));
/// assert!(except.keeps(&header::ETAG));
/// assert!(except.keeps(&header::CONTENT_TYPE), "always kept");
/// assert!(!StoredHeaders::All.keeps(&header::SET_COOKIE));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredHeaders {
    /// Every header but the never-stored ones. The default.
    #[default]
    All,
    /// Only these (and `Content-Type`, `Content-Encoding`, `Content-Range`).
    Only(Vec<HeaderName>),
    /// Every header but these (and the never-stored ones).
    Except(Vec<HeaderName>),
}

impl StoredHeaders {
    /// Stores only the named headers, and `Content-Type`, `Content-Encoding` and
    /// `Content-Range`.
    pub fn only(names: impl IntoIterator<Item = HeaderName>) -> Self {
        Self::Only(names.into_iter().collect())
    }

    /// Stores every header but the named ones.
    pub fn except(names: impl IntoIterator<Item = HeaderName>) -> Self {
        Self::Except(names.into_iter().collect())
    }

    /// Whether a header called `name` is stored (unless the response's `Connection`
    /// header names it).
    pub fn keeps(&self, name: &HeaderName) -> bool {
        if NEVER_STORED.contains(name) {
            return false;
        }
        match self {
            Self::All => true,
            _ if ALWAYS_STORED.contains(name) => true,
            Self::Only(names) => names.contains(name),
            Self::Except(names) => !names.contains(name),
        }
    }

    fn filter(&self, headers: &HeaderMap) -> Arc<[Header]> {
        // RFC 9110 7.6.1: the headers a `Connection` header names belong to that
        // connection alone.
        let connection = headers.get_all(header::CONNECTION);
        let per_connection = |name: &HeaderName| {
            connection.iter().any(|value| {
                value.as_bytes().split(|&b| b == b',').any(|option| {
                    option
                        .trim_ascii()
                        .eq_ignore_ascii_case(name.as_str().as_bytes())
                })
            })
        };
        headers
            .iter()
            .filter(|(name, _)| self.keeps(name) && !per_connection(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<Vec<_>>()
            .into()
    }
}

/// A stored header: its name and its value.
pub(crate) type Header = (HeaderName, HeaderValue);

/// A response as the store keeps it.
///
/// Two stored responses are equal when their status, body and headers are: as with a
/// [`HeaderMap`], the values of one header name compare in order, and different names
/// in any order.
///
/// ```
/// use idempotent_runtime::StoredResponse;
/// use http::{HeaderMap, StatusCode};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("location", "/orders/7".parse().unwrap());
/// let stored = StoredResponse::new(StatusCode::CREATED, headers, "{\"id\":7}".into());
/// let bytes = stored.to_bytes();
/// assert_eq!(StoredResponse::from_bytes(&bytes).unwrap(), stored);
/// assert_eq!(stored.headers()[0].1, "/orders/7");
/// ```
#[derive(Clone)]
pub struct StoredResponse {
    status: StatusCode,
    /// A shared list, not a map: one allocation where a `HeaderMap` takes three, and
    /// a store that keeps the response in memory clones it for free. A replay builds
    /// its map anyway.
    headers: Arc<[Header]>,
    body: Bytes,
}

impl PartialEq for StoredResponse {
    fn eq(&self, other: &Self) -> bool {
        fn values<'a>(
            headers: &'a [Header],
            name: &'a HeaderName,
        ) -> impl Iterator<Item = &'a HeaderValue> {
            headers
                .iter()
                .filter(move |(n, _)| n == name)
                .map(|(_, value)| value)
        }
        self.status == other.status
            && self.body == other.body
            && self.headers.len() == other.headers.len()
            && self
                .headers
                .iter()
                .all(|(name, _)| values(&self.headers, name).eq(values(&other.headers, name)))
    }
}

impl Eq for StoredResponse {}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A stored response that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored response is corrupt: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const MAGIC: &[u8; 4] = b"IDR1";

impl StoredResponse {
    /// A response to store; headers that must never be replayed are dropped.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self::kept(status, StoredHeaders::All.filter(&headers), body)
    }

    /// A response whose headers were already chosen by [`StoredHeaders::filter`], which
    /// leaves out the never-stored ones.
    fn kept(status: StatusCode, headers: Arc<[Header]>, body: Bytes) -> Self {
        Self {
            status,
            headers,
            body,
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored headers, in the order the handler gave them, repeated names included.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// A copy to keep for a long time: a small body is copied rather than shared, so
    /// that the handler's whole buffer (serialisers grow theirs by doubling) is not
    /// kept with it. Headers equal to `shared` (the last list kept) share it, since most
    /// responses of a service carry the same few; otherwise they become the new `shared`.
    pub(crate) fn to_kept(&self, shared: &mut Option<Arc<[Header]>>) -> Self {
        /// Up to this size, a body is copied.
        const COPIED: usize = 4096;
        let headers = match shared {
            Some(shared) if **shared == *self.headers => Arc::clone(shared),
            _ => Arc::clone(shared.insert(Arc::clone(&self.headers))),
        };
        let body = if self.body.len() <= COPIED {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.body.clone()
        };
        Self {
            status: self.status,
            headers,
            body,
        }
    }

    /// A compact binary form for stores that keep bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(10 + headers_len + self.body.len());
        out.put_slice(MAGIC);
        out.put_u16(self.status.as_u16());
        out.put_u32(self.headers.len() as u32);
        for (name, value) in self.headers.iter() {
            out.put_u16(name.as_str().len() as u16);
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out.put_slice(&self.body);
        out
    }

    /// Reads back what [`to_bytes`](Self::to_bytes) wrote. The body is copied out of
    /// `bytes`; [`from_shared`](Self::from_shared) spares the copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (status, headers, body_at) = decode_head(bytes)?;
        Ok(Self {
            status,
            headers,
            body: Bytes::copy_from_slice(&bytes[body_at..]),
        })
    }

    /// Reads back what [`to_bytes`](Self::to_bytes) wrote, keeping the body as a slice
    /// of `bytes` rather than a copy: for a store that reads each record into a buffer
    /// of its own (a `Vec<u8>` turns into [`Bytes`] without a copy), so that a replay
    /// does not copy the body once more.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{HeaderMap, StatusCode};
    /// use idempotent_runtime::StoredResponse;
    ///
    /// let stored = StoredResponse::new(StatusCode::OK, HeaderMap::new(), "a large body".into());
    /// let record = Bytes::from(stored.to_bytes());
    /// let read = StoredResponse::from_shared(record.clone()).unwrap();
    /// assert_eq!(read, stored);
    /// // The body is the record's own tail, not a copy of it.
    /// assert_eq!(read.body().as_ptr(), record[record.len() - read.body().len()..].as_ptr());
    /// ```
    pub fn from_shared(bytes: Bytes) -> Result<Self, DecodeError> {
        let (status, headers, body_at) = decode_head(&bytes)?;
        Ok(Self {
            status,
            headers,
            body: bytes.slice(body_at..),
        })
    }

    /// The response sent to a retry: the stored one plus `Idempotent-Replayed: true`.
    pub fn replay(self) -> Response {
        // Room from the start for the two headers added to every replay: ours, and
        // `Content-Length`, which is never stored and which the server sets. A copy of the
        // stored map is full, and growing it would reallocate and rehash it on every replay.
        const ADDED: usize = 2;
        let mut stored = self.headers;
        // A map holds at most 24 576 names; values of one name are not limited, and a
        // hint past the limit would panic. Only a record that no `HeaderMap` wrote could
        // bring more names: those past the limit are left out rather than panic.
        let mut headers = HeaderMap::try_with_capacity(stored.len() + ADDED).unwrap_or_default();
        match Arc::get_mut(&mut stored) {
            // Read back from a store for this replay alone: moved, not cloned.
            Some(owned) => {
                for (name, value) in owned {
                    let name = std::mem::replace(name, header::CONTENT_TYPE);
                    let value = std::mem::replace(value, HeaderValue::from_static(""));
                    let _ = headers.try_append(name, value);
                }
            }
            None => {
                for (name, value) in stored.iter() {
                    let _ = headers.try_append(name.clone(), value.clone());
                }
            }
        }
        let _ = headers.try_insert(REPLAYED, HeaderValue::from_static("true"));
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// The status and headers of a response that [`StoredResponse::to_bytes`] wrote, and
/// where its body starts.
fn decode_head(bytes: &[u8]) -> Result<(StatusCode, Arc<[Header]>, usize), DecodeError> {
    let mut buf = bytes;
    if buf.len() < 10 || &buf[..4] != MAGIC {
        return Err(DecodeError("bad header"));
    }
    buf.advance(4);
    let status = StatusCode::from_u16(buf.get_u16()).map_err(|_| DecodeError("bad status"))?;
    let count = buf.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut buf, 2)?;
        let name = HeaderName::from_bytes(name).map_err(|_| DecodeError("bad header name"))?;
        let value = take(&mut buf, 4)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| DecodeError("bad header value"))?;
        headers.push((name, value));
    }
    Ok((status, headers.into(), bytes.len() - buf.len()))
}

fn take<'a>(buf: &mut &'a [u8], len_bytes: usize) -> Result<&'a [u8], DecodeError> {
    if buf.len() < len_bytes {
        return Err(DecodeError("truncated"));
    }
    let len = if len_bytes == 2 {
        buf.get_u16() as usize
    } else {
        buf.get_u32() as usize
    };
    if buf.len() < len {
        return Err(DecodeError("truncated"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// What [`capture`] made of a response.
pub(crate) enum Captured {
    /// The whole body fit: the record to store and the response for the caller.
    Complete(StoredResponse, Response),
    /// The body is larger than the limit: the caller still gets all of it.
    TooLarge(Response),
    /// The body failed while being read.
    Failed(axum::Error),
}

/// A body's data as its frames arrive. Most bodies are one chunk: it is kept as it is,
/// with no list and no copy; several are joined once, at the end, at their total size.
#[derive(Default)]
pub(crate) struct Chunks {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    pub(crate) fn push(&mut self, data: Bytes) {
        self.len += data.len();
        match self.first {
            None => self.first = Some(data),
            Some(_) => self.rest.push(data),
        }
    }

    /// The bytes pushed so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunks, in order, for a body that is passed on rather than kept.
    fn into_list(self) -> Vec<Bytes> {
        self.first.into_iter().chain(self.rest).collect()
    }

    /// The whole body.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self.first {
            None => Bytes::new(),
            Some(only) if self.rest.is_empty() => only,
            Some(first) => {
                let mut joined = BytesMut::with_capacity(self.len);
                joined.put_slice(&first);
                for chunk in &self.rest {
                    joined.put_slice(chunk);
                }
                joined.freeze()
            }
        }
    }
}

/// Buffers a response body up to `limit` bytes.
pub(crate) async fn capture(
    response: Response,
    limit: usize,
    stored_headers: &StoredHeaders,
) -> Captured {
    let (mut parts, mut body) = response.into_parts();
    let mut chunks = Chunks::default();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return Captured::Failed(err),
        };
        // Trailers are not kept, nor sent with the first response: they are rare in
        // responses, and a replay could not give them back.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        chunks.push(data);
        if chunks.len() > limit {
            let body = Body::new(Prefixed {
                prefix: chunks.into_list().into(),
                rest: body,
            });
            return Captured::TooLarge(Response::from_parts(parts, body));
        }
    }
    let body = chunks.into_bytes();
    // The first response is sent from the buffered bytes, without trailers: it must not
    // announce any.
    parts.headers.remove(header::TRAILER);
    let stored = StoredResponse::kept(
        parts.status,
        stored_headers.filter(&parts.headers),
        body.clone(),
    );
    Captured::Complete(stored, Response::from_parts(parts, Body::from(body)))
}

/// A body whose first chunks were already read.
struct Prefixed {
    /// A queue: a body past the limit may have arrived in a great many small chunks.
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(buffered));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_repeated_and_binary_headers() {
        let mut headers = HeaderMap::new();
        headers.append("vary", "a".parse().unwrap());
        headers.append("vary", "b".parse().unwrap());
        headers.insert("x-bin", HeaderValue::from_bytes(&[0xff, 0x80]).unwrap());
        headers.insert("set-cookie", "session=1".parse().unwrap());
        headers.insert("connection", "close".parse().unwrap());
        let stored =
            StoredResponse::new(StatusCode::CREATED, headers, Bytes::from_static(&[0, 1, 2]));
        let names: Vec<&str> = stored.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["vary", "vary", "x-bin"],
            "set-cookie and connection dropped"
        );
        let back = StoredResponse::from_bytes(&stored.to_bytes()).unwrap();
        assert_eq!(back, stored);
        assert_eq!(back.headers()[2].1.as_bytes(), &[0xff, 0x80]);
    }

    #[test]
    fn headers_a_connection_header_names_are_not_stored() {
        let mut headers = HeaderMap::new();
        headers.append("connection", "keep-alive, X-Hop".parse().unwrap());
        headers.append("connection", "x-other ,upgrade".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("x-other", "2".parse().unwrap());
        headers.insert("x-hopper", "3".parse().unwrap());
        headers.insert("proxy-connection", "keep-alive".parse().unwrap());
        headers.insert("etag", "\"v1\"".parse().unwrap());
        let stored = StoredResponse::new(StatusCode::OK, headers, Bytes::new());
        let names: Vec<&str> = stored.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-hopper", "etag"]);
    }

    #[test]
    fn a_partial_response_keeps_its_range_whatever_the_choice() {
        let mut headers = HeaderMap::new();
        headers.insert("content-range", "bytes 0-1/10".parse().unwrap());
        headers.insert("etag", "\"v1\"".parse().unwrap());
        let only = StoredHeaders::only([header::LOCATION]).filter(&headers);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].0, header::CONTENT_RANGE);
        let except = StoredHeaders::except([header::CONTENT_RANGE]).filter(&headers);
        assert_eq!(except.len(), 2, "always kept");
    }

    #[test]
    fn equality_is_that_of_a_header_map() {
        let stored = |headers: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for &(name, value) in headers {
                map.append(name, HeaderValue::from_static(value));
            }
            StoredResponse::new(StatusCode::OK, map, Bytes::from_static(b"x"))
        };
        let one = stored(&[("vary", "a"), ("vary", "b"), ("etag", "1")]);
        assert_eq!(one, stored(&[("etag", "1"), ("vary", "a"), ("vary", "b")]));
        assert_ne!(one, stored(&[("vary", "b"), ("vary", "a"), ("etag", "1")]));
        assert_ne!(one, stored(&[("vary", "a"), ("etag", "1")]));
        assert_ne!(one, stored(&[("vary", "a"), ("vary", "b"), ("etag", "2")]));
    }

    #[test]
    fn a_kept_copy_holds_a_small_body_of_its_own_and_shares_a_large_one() {
        let mut buffer = Vec::with_capacity(128);
        buffer.extend_from_slice(b"{\"id\":7}");
        let small = StoredResponse::new(StatusCode::OK, HeaderMap::new(), buffer.into());
        let kept = small.to_kept(&mut None);
        assert_eq!(kept, small);
        assert_ne!(kept.body().as_ptr(), small.body().as_ptr(), "copied");

        let large = StoredResponse::new(StatusCode::OK, HeaderMap::new(), vec![7; 10_000].into());
        let kept = large.to_kept(&mut None);
        assert_eq!(kept, large);
        assert_eq!(kept.body().as_ptr(), large.body().as_ptr(), "shared");
    }

    #[test]
    fn kept_copies_with_equal_headers_share_one_list() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            StoredResponse::new(StatusCode::CREATED, headers, Bytes::from_static(b"{}"))
        };
        let mut shared = None;
        let first = with("application/json").to_kept(&mut shared);
        let second = with("application/json").to_kept(&mut shared);
        assert_eq!(second, with("application/json"));
        assert_eq!(
            first.headers().as_ptr(),
            second.headers().as_ptr(),
            "one list"
        );
        // Other headers are kept as they are, and become the list to share.
        let other = with("text/plain").to_kept(&mut shared);
        assert_eq!(other, with("text/plain"));
        assert_ne!(other.headers().as_ptr(), first.headers().as_ptr());
        let again = with("text/plain").to_kept(&mut shared);
        assert_eq!(other.headers().as_ptr(), again.headers().as_ptr());
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        let stored =
            StoredResponse::new(StatusCode::OK, HeaderMap::new(), Bytes::from_static(b"x"));
        let bytes = stored.to_bytes();
        for len in 0..bytes.len() - 1 {
            let _ = StoredResponse::from_bytes(&bytes[..len]);
        }
        assert!(StoredResponse::from_bytes(b"nope").is_err());
        let mut bad = bytes.clone();
        bad[7..10].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(StoredResponse::from_bytes(&bad).is_err());
    }

    #[test]
    fn a_replay_has_room_for_the_headers_added_to_it() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers.insert(header::LOCATION, "/orders/7".parse().unwrap());
        let stored = StoredResponse::new(StatusCode::CREATED, headers, Bytes::from_static(b"{}"));
        // Shared, as a store holding it keeps it, and unique.
        let kept = stored.clone();
        for mut response in [stored.replay(), kept.replay()] {
            let headers = response.headers_mut();
            let capacity = headers.capacity();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            assert_eq!(headers.capacity(), capacity, "Content-Length grew the map");
            assert_eq!(headers[REPLAYED], "true");
        }
    }

    #[test]
    fn a_header_repeated_more_times_than_a_map_has_names_replays_whole() {
        // A handler that sends a `Link` per item of a long list.
        let mut headers = HeaderMap::new();
        for i in 0..30_000 {
            headers.append(header::LINK, HeaderValue::from(i));
        }
        let stored = StoredResponse::new(StatusCode::OK, headers, Bytes::new());
        let read_back = StoredResponse::from_bytes(&stored.to_bytes()).unwrap();
        // Shared, as a store holding it keeps it, and read back for this replay alone.
        for response in [stored.clone().replay(), read_back.replay()] {
            let links = response.headers().get_all(header::LINK);
            assert_eq!(links.iter().count(), 30_000);
            assert_eq!(links.iter().next_back().unwrap(), "29999");
            assert_eq!(response.headers()[REPLAYED], "true");
        }
    }

    #[tokio::test]
    async fn oversized_body_is_still_sent_whole() {
        let response = Response::new(Body::from(vec![7u8; 100]));
        match capture(response, 10, &StoredHeaders::All).await {
            Captured::TooLarge(response) => {
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), 100);
            }
            _ => panic!("expected TooLarge"),
        }
    }

    #[tokio::test]
    async fn a_first_response_does_not_announce_trailers_it_goes_without() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"part"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut response = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
        response
            .headers_mut()
            .insert(header::TRAILER, "x-checksum".parse().unwrap());
        let Captured::Complete(stored, response) =
            capture(response, 100, &StoredHeaders::All).await
        else {
            panic!("expected Complete");
        };
        assert!(stored.headers().is_empty());
        assert!(!response.headers().contains_key(header::TRAILER));
        let body = response.into_body().collect().await.unwrap();
        assert!(body.trailers().is_none());
        assert_eq!(body.to_bytes(), "part");
    }
}
