//! Just enough HTTP/1.1 for Duo's clients, as pure functions over bytes: one request per
//! connection (they close after each), a `Content-Length` body, no chunked encoding.

use std::fmt::Write as _;

/// Largest head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, upper-case as sent.
    pub method: String,
    /// The path as sent, without the query.
    pub path: String,
    /// The query string as sent, without `?`.
    pub query: String,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The result of reading what has arrived so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole request.
    Done(Request),
    /// A request that cannot be served: the status and why.
    Bad(u16, &'static str),
}

/// Parses a request from the bytes received so far.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Parsed::Bad(431, "request head too large")
        } else {
            Parsed::Incomplete
        };
    };
    if end > MAX_HEAD {
        return Parsed::Bad(431, "request head too large");
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad(400, "request head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad(400, "malformed request line");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Parsed::Bad(400, "malformed request line");
    }
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Parsed::Bad(400, "malformed header");
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Parsed::Bad(501, "transfer encodings are not supported");
    }
    let len = match req.header("content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Parsed::Bad(413, "request body too large"),
        Some(Err(_)) => return Parsed::Bad(400, "malformed content-length"),
    };
    let body = &buf[end + 4..];
    if body.len() < len {
        return Parsed::Incomplete;
    }
    req.body = body[..len].to_vec();
    Parsed::Done(req)
}

/// Decodes `application/x-www-form-urlencoded` text (a query or a form body).
pub fn parse_form(s: &str) -> Option<Vec<(String, String)>> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((unescape(k)?, unescape(v)?))
        })
        .collect()
}

/// Undoes percent-encoding and `+` for space; `None` for bad escapes or invalid UTF-8.
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

/// A whole response with a JSON body; the connection closes after it.
pub fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn requests_parse_once_complete() {
        let raw = b"POST /admin/v1/users?a=1 HTTP/1.1\r\nHost: x:9\r\nContent-Length: 5\r\nX-Duo-A: b\r\n\r\nhello";
        for cut in [0, 10, raw.len() - 6, raw.len() - 1] {
            assert_eq!(parse(&raw[..cut]), Parsed::Incomplete, "{cut}");
        }
        let Parsed::Done(r) = parse(raw) else {
            panic!()
        };
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_str()),
            ("POST", "/admin/v1/users", "a=1")
        );
        assert_eq!(r.header("x-duo-a"), Some("b"));
        assert_eq!(r.header("host"), Some("x:9"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn bad_requests_are_refused_with_a_status() {
        assert_eq!(
            parse(b"GET / HTTP/1.1 x\r\n\r\n"),
            Parsed::Bad(400, "malformed request line")
        );
        assert_eq!(
            parse(b"GET nopath HTTP/1.1\r\n\r\n"),
            Parsed::Bad(400, "malformed request line")
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            Parsed::Bad(400, "malformed header")
        );
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Parsed::Bad(413, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Bad(501, _)
        ));
        assert!(matches!(
            parse(&vec![b'a'; MAX_HEAD + 1]),
            Parsed::Bad(431, _)
        ));
    }

    #[test]
    fn forms_decode() {
        assert_eq!(
            parse_form("username=ann+lee&realname=A%2FB&empty=&flag").unwrap(),
            vec![
                ("username".into(), "ann lee".into()),
                ("realname".into(), "A/B".into()),
                ("empty".into(), String::new()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(parse_form("").unwrap(), vec![]);
        assert!(parse_form("a=%zz").is_none());
        assert!(parse_form("a=%ff").is_none());
        assert!(parse_form("a=%4").is_none());
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response(404, b"{}")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 2\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n{}"));
    }
}
