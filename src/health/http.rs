//! The HTTP/1.1 exchange of one http/https probe (SPEC §5), over any stream: send one `GET`,
//! read the status line and headers, then as much of the body as the check needs, never more
//! than [`MAX_BODY`] bytes of it, and follow no redirect. It also says whether the connection
//! may carry the next probe (a complete, framed response on a keep-alive connection), so the
//! prober can reuse one connection per endpoint as Envoy's health checker does.
//!
//! A hand-written client instead of reqwest: a probe is one request whose only questions are
//! the status and a substring of the body, and a general client's per-request machinery
//! (a pool, a connector stack, a task per connection) cost more than the probe itself.
//! probe.rs owns connections, TLS and the timeout that bounds all of this.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::{CheckSpec, StatusSet};

/// SPEC §5: HTTP probes read at most the first 64 KiB of a body.
pub const MAX_BODY: usize = 64 * 1024;

/// The status line and headers may take as much as the body may; hyper's default limit is
/// larger (~400 KiB) but a health endpoint that needs more is broken anyway.
const MAX_HEAD: usize = 64 * 1024;

/// Bytes on the wire for the body, chunk framing included: four times the body cap, so
/// tiny chunks or long chunk extensions cannot make a probe read without end.
const MAX_BODY_WIRE: usize = 4 * MAX_BODY;

/// A chunk-size line (hex size and extensions), as hyper bounds it.
const MAX_CHUNK_LINE: usize = 4096;

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 4096;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Not one byte of a response came back (the write failed, or the connection closed or
    /// reset first). On a kept-alive connection this usually means the server closed it while
    /// idle, and a fresh connection should be tried before calling the probe a failure.
    NoResponse(String),
    /// Anything else: the message for operators.
    Failed(String),
}

impl Failure {
    pub(super) fn into_message(self) -> String {
        match self {
            Failure::NoResponse(m) | Failure::Failed(m) => m,
        }
    }
}

/// The request of a check, rendered once per target: `GET path HTTP/1.1`, `Host`, `Accept`
/// and the check's headers. `authority` is the Host header's value.
pub(super) fn request(spec: &CheckSpec, authority: &str) -> Result<Box<[u8]>, String> {
    if !authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("bad host {authority:?}"));
    }
    let mut r = Vec::with_capacity(64 + spec.path.len() + authority.len());
    r.extend_from_slice(b"GET ");
    // A URL would percent-encode a space or a non-ASCII byte; so do we, and nothing else.
    for &b in spec.path.as_bytes() {
        if b.is_ascii_graphic() {
            r.push(b);
        } else {
            r.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    r.extend_from_slice(b" HTTP/1.1\r\n");
    let has = |name: &str| {
        spec.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    if !has("host") {
        push_header(&mut r, "Host", authority);
    }
    if !has("accept") {
        push_header(&mut r, "Accept", "*/*");
    }
    for (k, v) in &spec.headers {
        if k.is_empty() || !k.bytes().all(is_token) {
            return Err(format!("bad header name {k:?}"));
        }
        // RFC 9110 §5.5: visible characters, spaces and tabs; never CR or LF.
        if !v
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
        {
            return Err(format!("bad value of header {k:?}"));
        }
        push_header(&mut r, k, v);
    }
    r.extend_from_slice(b"\r\n");
    Ok(r.into_boxed_slice())
}

fn push_header(r: &mut Vec<u8>, name: &str, value: &str) {
    r.extend_from_slice(name.as_bytes());
    r.extend_from_slice(b": ");
    r.extend_from_slice(value.as_bytes());
    r.extend_from_slice(b"\r\n");
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the response must show to pass.
pub(super) struct Expect<'a> {
    pub(super) status: &'a StatusSet,
    pub(super) body: Option<&'a [u8]>,
}

/// Send `request` and judge the response. `Ok(reusable)`: the probe passed, and `reusable`
/// says the connection is at a clean boundary and the server keeps it open.
pub(super) async fn exchange<S>(
    stream: &mut S,
    request: &[u8],
    expect: &Expect<'_>,
) -> Result<bool, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let no_response = |e: std::io::Error| Failure::NoResponse(super::probe::io_error(&e));
    stream.write_all(request).await.map_err(no_response)?;
    stream.flush().await.map_err(no_response)?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let head_end = read_head(stream, &mut buf).await?;
    let head = parse_head(&buf[..head_end])?;
    if !expect.status.contains(head.status) {
        return Err(Failure::Failed(format!("status {}", head.status)));
    }
    buf.drain(..head_end);
    let framing = head.framing();
    let keep_alive = head.keep_alive && framing != Framing::Close;
    let body = read_body(stream, buf, framing, expect.body).await;
    match (body, expect.body) {
        (Ok(b), _) if b.found => Ok(keep_alive && b.complete),
        // No body check: the status decided; a body we could not drain only ends the reuse.
        (_, None) => Ok(false),
        (Ok(b), Some(want)) if b.complete || b.capped => Err(Failure::Failed(format!(
            "body lacks {:?}",
            String::from_utf8_lossy(want)
        ))),
        (Ok(_), Some(_)) => Err(Failure::Failed("connection closed early".into())),
        (Err(e), Some(_)) => Err(e),
    }
}

/// Read until the blank line that ends the head; returns its end (after `\r\n\r\n`).
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, Failure> {
    let mut searched = 0;
    loop {
        if let Some(i) = find(&buf[searched..], b"\r\n\r\n") {
            return Ok(searched + i + 4);
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() >= MAX_HEAD {
            return Err(Failure::Failed("response head over 64 KiB".into()));
        }
        let n = match read_more(stream, buf, MAX_HEAD).await {
            Ok(n) => n,
            Err(e) if buf.is_empty() => {
                return Err(Failure::NoResponse(super::probe::io_error(&e)));
            }
            Err(e) => return Err(Failure::Failed(super::probe::io_error(&e))),
        };
        if n == 0 {
            let msg = "connection closed early".to_string();
            return Err(if buf.is_empty() {
                Failure::NoResponse(msg)
            } else {
                Failure::Failed(msg)
            });
        }
    }
}

/// Append at most `READ_CHUNK` bytes (and never past `limit`) from the stream.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    let len = buf.len();
    let want = READ_CHUNK.min(limit.saturating_sub(len)).max(1);
    buf.resize(len + want, 0);
    let n = stream.read(&mut buf[len..]).await;
    buf.truncate(len + *n.as_ref().unwrap_or(&0));
    n
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// 1xx, 204, 304: no body (RFC 9112 §6.3).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes: never reusable.
    Close,
}

#[derive(Debug)]
struct Head {
    status: u16,
    content_length: Option<u64>,
    /// Transfer-Encoding present; `chunked` is whether chunked is its last coding.
    transfer_encoding: bool,
    chunked: bool,
    keep_alive: bool,
}

impl Head {
    /// RFC 9112 §6.3, in its order.
    fn framing(&self) -> Framing {
        if matches!(self.status, 100..=199 | 204 | 304) {
            Framing::Empty
        } else if self.transfer_encoding {
            if self.chunked && self.content_length.is_none() {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            match self.content_length {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        }
    }
}

fn parse_head(head: &[u8]) -> Result<Head, Failure> {
    let bad = || Failure::Failed("bad response: not HTTP/1.x".into());
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or_else(bad)?;
    // `HTTP/1.1 200 OK`: version, space, three digits, then a space or the end.
    if status_line.len() < 12
        || !status_line.starts_with(b"HTTP/1.")
        || status_line[8] != b' '
        || !status_line[9..12].iter().all(u8::is_ascii_digit)
        || status_line.get(12).is_some_and(|&b| b != b' ')
    {
        return Err(bad());
    }
    let http11 = status_line[7] == b'1';
    let status = status_line[9..12]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut h = Head {
        status,
        content_length: None,
        transfer_encoding: false,
        chunked: false,
        keep_alive: http11,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Failure::Failed("bad response header".into()));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n =
                parse_length(value).ok_or_else(|| Failure::Failed("bad Content-Length".into()))?;
            if h.content_length.is_some_and(|old| old != n) {
                return Err(Failure::Failed("bad Content-Length".into()));
            }
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            h.transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            h.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    h.keep_alive = false;
                }
            }
        }
    }
    Ok(h)
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What reading the body found.
#[derive(Debug, Default)]
struct Body {
    /// The expected text was seen (or none was asked for).
    found: bool,
    /// The body ended where its framing said.
    complete: bool,
    /// Reading stopped at a bound before the end.
    capped: bool,
}

/// Read the body after the head (`buf` holds what already came), decoding chunks, until it
/// ends, a bound is hit, or — when the connection cannot be reused anyway — `want` is found.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
    framing: Framing,
    want: Option<&[u8]>,
) -> Result<Body, Failure> {
    let want = want.filter(|w| !w.is_empty());
    let mut out = Body {
        found: want.is_none(),
        ..Body::default()
    };
    let mut decoder = match framing {
        Framing::Empty => {
            return Ok(Body {
                complete: true,
                ..out
            });
        }
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Size,
        Framing::Close => Decoder::Close,
    };
    let mut body: Vec<u8> = Vec::new();
    let mut wire = buf.len();
    loop {
        let before = body.len();
        let used = decoder.feed(&buf, &mut body)?;
        buf.drain(..used);
        if let Some(w) = want
            && !out.found
        {
            let from = before.saturating_sub(w.len() - 1);
            out.found = find(&body[from..], w).is_some();
        }
        if decoder == Decoder::Done {
            out.complete = true;
            return Ok(out);
        }
        if body.len() >= MAX_BODY || wire >= MAX_BODY_WIRE {
            out.capped = true;
            return Ok(out);
        }
        if out.found && (decoder == Decoder::Close || framing_too_long(&decoder, body.len())) {
            return Ok(out);
        }
        let n = read_more(stream, &mut buf, MAX_BODY_WIRE)
            .await
            .map_err(|e| Failure::Failed(super::probe::io_error(&e)))?;
        wire += n;
        if n == 0 {
            // The end of a body read until close; for the other framings, cut short.
            out.complete = decoder == Decoder::Close;
            return Ok(out);
        }
    }
}

/// A found text ends the read early when the rest of the body would pass the cap anyway.
fn framing_too_long(decoder: &Decoder, have: usize) -> bool {
    matches!(decoder, Decoder::Length(left) if *left > (MAX_BODY - have.min(MAX_BODY)) as u64)
}

/// Body decoding state (RFC 9112 §6 and §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    Close,
    /// Expecting a chunk-size line.
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to the blank one.
    Trailers,
    Done,
}

impl Decoder {
    /// Decode what `input` allows; append body bytes to `body` (up to [`MAX_BODY`]); return
    /// how many input bytes were used.
    fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, Failure> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match *self {
                Decoder::Done => return Ok(used),
                Decoder::Close => {
                    take(rest, rest.len(), body);
                    return Ok(input.len());
                }
                Decoder::Length(0) => *self = Decoder::Done,
                Decoder::Length(left) | Decoder::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    take(rest, n, body);
                    used += n;
                    let left = left - n as u64;
                    *self = match *self {
                        Decoder::Length(_) => Decoder::Length(left),
                        _ if left == 0 => Decoder::DataEnd,
                        _ => Decoder::Data(left),
                    };
                }
                Decoder::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Failure::Failed("bad chunked body".into()));
                    }
                    used += 2;
                    *self = Decoder::Size;
                }
                Decoder::Size | Decoder::Trailers => {
                    let Some(end) = find(rest, b"\r\n") else {
                        if rest.len() > MAX_CHUNK_LINE {
                            return Err(Failure::Failed("bad chunked body".into()));
                        }
                        return Ok(used);
                    };
                    let line = &rest[..end];
                    used += end + 2;
                    *self = match *self {
                        Decoder::Trailers if line.is_empty() => Decoder::Done,
                        Decoder::Trailers => Decoder::Trailers,
                        _ => match chunk_size(line) {
                            Some(0) => Decoder::Trailers,
                            Some(n) => Decoder::Data(n),
                            None => return Err(Failure::Failed("bad chunked body".into())),
                        },
                    };
                }
            }
        }
    }
}

/// Append `input[..n]` to the body, up to [`MAX_BODY`].
fn take(input: &[u8], n: usize, body: &mut Vec<u8>) {
    let room = MAX_BODY.saturating_sub(body.len());
    body.extend_from_slice(&input[..n.min(room)]);
}

/// The hex size before any `;extension`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&b| b == b';').next()?.trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    let text = std::str::from_utf8(hex).ok()?;
    u64::from_str_radix(text, 16).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CheckKind;
    use std::time::Duration;

    fn spec() -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Http,
            port: 80,
            path: "/health check".into(),
            host: None,
            expect_status: StatusSet::default(),
            expect_body: None,
            headers: vec![("User-Agent".into(), "meridian-probe".into())],
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            ca_file: None,
            tls_verify: true,
            quorum: Default::default(),
        }
    }

    /// Run one exchange against canned response bytes.
    fn judge(response: &[u8], body: Option<&str>) -> Result<bool, Failure> {
        let status = StatusSet::default();
        let expect = Expect {
            status: &status,
            body: body.map(str::as_bytes),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(1 << 20);
            server.write_all(response).await.expect("canned response");
            server.shutdown().await.expect("end of the response");
            let r = exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", &expect).await;
            drop(server);
            r
        })
    }

    #[test]
    fn the_request_is_rendered_once_with_host_accept_and_headers() {
        let r = request(&spec(), "www.example.test:8080").expect("request");
        assert_eq!(
            std::str::from_utf8(&r).expect("ascii"),
            "GET /health%20check HTTP/1.1\r\nHost: www.example.test:8080\r\nAccept: */*\r\nUser-Agent: meridian-probe\r\n\r\n"
        );
        let mut s = spec();
        s.headers = vec![("X-Bad".into(), "a\r\nInjected: 1".into())];
        assert!(request(&s, "h").is_err());
        s.headers = vec![("Bad Name".into(), "v".into())];
        assert!(request(&s, "h").is_err());
    }

    #[test]
    fn framed_keep_alive_responses_are_reusable() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(judge(ok, Some("ok")), Ok(true));
        assert_eq!(judge(ok, None), Ok(true));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nall\r\n3\r\n ok\r\n0\r\nT: 1\r\n\r\n";
        assert_eq!(judge(&chunked[..], Some("all ok")), Ok(true));
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(judge(close, Some("ok")), Ok(false));
        let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(judge(http10, Some("ok")), Ok(false));
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nall ok";
        assert_eq!(judge(until_close, Some("ok")), Ok(false));
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(judge(no_content, None), Ok(true));
    }

    #[test]
    fn failures_say_why() {
        let fail = |r: &[u8], body| judge(r, body).expect_err("fails");
        assert_eq!(
            fail(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", None),
            Failure::Failed("status 503".into())
        );
        assert_eq!(
            fail(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",
                Some("ok")
            ),
            Failure::Failed("body lacks \"ok\"".into())
        );
        assert_eq!(
            fail(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nbad",
                Some("ok")
            ),
            Failure::Failed("connection closed early".into())
        );
        assert_eq!(
            fail(b"", None),
            Failure::NoResponse("connection closed early".into())
        );
        assert_eq!(
            fail(b"SSH-2.0-OpenSSH\r\n\r\n", None),
            Failure::Failed("bad response: not HTTP/1.x".into())
        );
        assert_eq!(
            fail(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Some("ok")
            ),
            Failure::Failed("bad chunked body".into())
        );
    }

    #[test]
    fn the_head_and_the_body_are_bounded() {
        let mut huge_head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..(MAX_HEAD / 16 + 1) {
            huge_head.extend_from_slice(b"X-Pad: 12345678\r\n");
        }
        huge_head.extend_from_slice(b"\r\n");
        assert_eq!(
            judge(&huge_head, None),
            Err(Failure::Failed("response head over 64 KiB".into()))
        );
        // The text just past the first 64 KiB of the body is not seen.
        let mut late = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 2
        )
        .into_bytes();
        late.extend(std::iter::repeat_n(b'x', MAX_BODY));
        late.extend_from_slice(b"ok");
        assert_eq!(
            judge(&late, Some("ok")),
            Err(Failure::Failed("body lacks \"ok\"".into()))
        );
        // Tiny chunks: the wire bound stops the read.
        let mut tiny = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..MAX_BODY {
            tiny.extend_from_slice(b"1\r\nx\r\n");
        }
        assert_eq!(
            judge(&tiny, Some("ok")),
            Err(Failure::Failed("body lacks \"ok\"".into()))
        );
    }
}
