//! Duo's request signatures, checked as pure functions over a request's parts.
//!
//! A client signs a canonical string with its secret key and sends
//! `Authorization: Basic base64(ikey ":" hex(signature))` and a `Date` header:
//!
//! - **Version 2**: `date \n METHOD \n host \n path \n params`, where `params` is every
//!   query or form parameter, each name and value percent-encoded (everything but
//!   `A-Z a-z 0-9 - . _ ~`, upper-case hex), sorted by name then value, joined with `&`.
//!   Signed with HMAC-SHA1 (older clients) or HMAC-SHA512 (current `duo_client`).
//! - **Version 5**: the same five lines, then the hex SHA-512 of the raw body (empty for
//!   GET and DELETE; for POST the body is JSON and `params` is empty), then the hex SHA-512
//!   of the request's `X-Duo-*` headers (lower-cased names, sorted, name and value joined
//!   by NUL bytes). Signed with HMAC-SHA512.
//!
//! The date must be within [`MAX_SKEW_SECS`] of the server's clock either way, so that a
//! captured request cannot be replayed later.

use ring::{digest, hmac};
use std::fmt::Write as _;

/// How far a request's date may be from the server's clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// Which canonical form a request was signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigVersion {
    /// Date, method, host, path, parameters.
    V2,
    /// Version 2's lines, then the body's and the `X-Duo-*` headers' SHA-512.
    V5,
}

/// What a signature covers, as the server received it.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// The request method.
    pub method: &'a str,
    /// The API host name the client addressed (without a port).
    pub host: &'a str,
    /// The path as sent, without the query.
    pub path: &'a str,
    /// Decoded query parameters, and form parameters of a form-encoded body.
    pub params: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
    /// Whether the body is JSON: its parameters are then covered by version 5's body hash
    /// only, so version 2 (which does not hash the body) must not be accepted for it.
    pub json_body: bool,
    /// The date header's value as sent.
    pub date: &'a str,
    /// The `X-Duo-*` headers, names lower-cased.
    pub duo_headers: &'a [(String, String)],
}

/// The parts of an `Authorization: Basic` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The integration key.
    pub ikey: String,
    /// The signature bytes (20 for HMAC-SHA1, 64 for HMAC-SHA512).
    pub signature: Vec<u8>,
}

/// Parses `Basic base64(ikey:hexsig)`; `None` if it is anything else.
pub fn parse_authorization(header: &str) -> Option<Authorization> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (ikey, sig) = text.split_once(':')?;
    let signature = hex_decode(sig)?;
    if ikey.is_empty() || ikey.len() > 64 || !(signature.len() == 20 || signature.len() == 64) {
        return None;
    }
    Some(Authorization {
        ikey: ikey.to_owned(),
        signature,
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 || s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Percent-encodes as Python's `urllib.parse.quote(s, '~')`: all but `A-Za-z0-9-._~`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The canonical parameter line: encoded, sorted by name then value, joined with `&`.
pub fn canon_params(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (quote(k), quote(v))).collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn sha512_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA512, data).as_ref())
}

/// The version 2 canonical string.
pub fn canonical_v2(r: &Signed<'_>) -> String {
    [
        r.date.to_owned(),
        r.method.to_ascii_uppercase(),
        r.host.to_ascii_lowercase(),
        r.path.to_owned(),
        canon_params(r.params),
    ]
    .join("\n")
}

/// The version 5 canonical string.
pub fn canonical_v5(r: &Signed<'_>) -> String {
    let mut headers: Vec<(String, &str)> = r
        .duo_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    headers.sort();
    let joined = headers
        .iter()
        .flat_map(|(k, v)| [k.as_str(), *v])
        .collect::<Vec<_>>()
        .join("\0");
    format!(
        "{}\n{}\n{}",
        canonical_v2(r),
        sha512_hex(r.body),
        sha512_hex(joined.as_bytes())
    )
}

/// Checks a signature with the key's secret in constant time; the version it matched, or
/// `None`. A 20-byte signature can only be version 2 with HMAC-SHA1; a 64-byte one is
/// version 5, or version 2 with HMAC-SHA512 when the body is not JSON.
pub fn verify(r: &Signed<'_>, auth: &Authorization, skey: &[u8]) -> Option<SigVersion> {
    let check = |alg, canon: &str| {
        hmac::verify(
            &hmac::Key::new(alg, skey),
            canon.as_bytes(),
            &auth.signature,
        )
        .is_ok()
    };
    match auth.signature.len() {
        20 if !r.json_body => {
            check(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &canonical_v2(r)).then_some(SigVersion::V2)
        }
        64 => {
            if check(hmac::HMAC_SHA512, &canonical_v5(r)) {
                Some(SigVersion::V5)
            } else if !r.json_body && check(hmac::HMAC_SHA512, &canonical_v2(r)) {
                Some(SigVersion::V2)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Parses an RFC 2822 date as `email.utils.formatdate` writes it
/// (`Tue, 24 Nov 2026 14:00:50 -0000`; `GMT`/`UT`/`UTC` or `+hhmm` zones) to Unix time.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = match s.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => s,
    };
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let [day, month, year, clock, zone] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))?;
    let month = time::Month::try_from(month as u8 + 1).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let hms: Vec<&str> = clock.split(':').collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    let t = time::Time::from_hms(h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?).ok()?;
    let offset_secs: i64 = match *zone {
        "GMT" | "UT" | "UTC" | "Z" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh: i64 = z.get(1..3)?.parse().ok()?;
            let mm: i64 = z.get(3..5)?.parse().ok()?;
            let v = hh * 3600 + mm * 60;
            if z.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp()
            - offset_secs,
    )
}

/// Whether a request's date is within [`MAX_SKEW_SECS`] of `now`.
pub fn date_is_fresh(date: &str, now: i64) -> bool {
    parse_date(date).is_some_and(|t| (t - now).abs() <= MAX_SKEW_SECS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut n = 0u32;
            for (i, &b) in chunk.iter().enumerate() {
                n |= u32::from(b) << (16 - 8 * i);
            }
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn sign(alg: hmac::Algorithm, skey: &str, canon: &str) -> Authorization {
        let tag = hmac::sign(&hmac::Key::new(alg, skey.as_bytes()), canon.as_bytes());
        let header = format!(
            "Basic {}",
            b64(format!("DIKEY:{}", hex(tag.as_ref())).as_bytes())
        );
        parse_authorization(&header).unwrap()
    }

    const DATE: &str = "Tue, 24 Nov 2026 14:00:50 -0000";

    fn params() -> Vec<(String, String)> {
        vec![
            ("username".into(), "ann lee/x".into()),
            ("realname".into(), "Ann ~Lee".into()),
            ("alias1".into(), "a+b".into()),
        ]
    }

    fn get<'a>(p: &'a [(String, String)], h: &'a [(String, String)]) -> Signed<'a> {
        Signed {
            method: "get",
            host: "API.Example.com",
            path: "/admin/v1/users",
            params: p,
            body: b"",
            json_body: false,
            date: DATE,
            duo_headers: h,
        }
    }

    #[test]
    fn the_version_2_canonical_string_is_duos() {
        let p = params();
        assert_eq!(
            canonical_v2(&get(&p, &[])),
            "Tue, 24 Nov 2026 14:00:50 -0000\nGET\napi.example.com\n/admin/v1/users\n\
             alias1=a%2Bb&realname=Ann%20~Lee&username=ann%20lee%2Fx"
        );
        assert_eq!(canon_params(&[]), "");
        // Several values of one name sort by value.
        let multi = vec![("k".into(), "b".into()), ("k".into(), "a".into())];
        assert_eq!(canon_params(&multi), "k=a&k=b");
        assert_eq!(quote("é"), "%C3%A9");
    }

    #[test]
    fn the_version_5_canonical_string_hashes_body_and_duo_headers() {
        let body = br#"{"count":"1","valid_secs":"30"}"#;
        let h = vec![("X-Duo-Foo".to_owned(), "bar".to_owned())];
        let r = Signed {
            method: "POST",
            body,
            json_body: true,
            ..get(&[], &h)
        };
        let c = canonical_v5(&r);
        let lines: Vec<&str> = c.split('\n').collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(
            lines[4], "",
            "a JSON body's parameters are not in the params line"
        );
        assert_eq!(lines[5], sha512_hex(body));
        assert_eq!(lines[6], sha512_hex(b"x-duo-foo\0bar"));
        // No X-Duo headers: the hash of nothing.
        assert_eq!(
            canonical_v5(&get(&[], &[])).rsplit('\n').next().unwrap(),
            sha512_hex(b"")
        );
    }

    #[test]
    fn signatures_of_each_kind_verify_and_nothing_else_does() {
        let p = params();
        let r = get(&p, &[]);
        let skey = "s".repeat(40);
        let v2_sha1 = sign(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            &skey,
            &canonical_v2(&r),
        );
        let v2_sha512 = sign(hmac::HMAC_SHA512, &skey, &canonical_v2(&r));
        let v5 = sign(hmac::HMAC_SHA512, &skey, &canonical_v5(&r));
        assert_eq!(v2_sha1.ikey, "DIKEY");
        assert_eq!(verify(&r, &v2_sha1, skey.as_bytes()), Some(SigVersion::V2));
        assert_eq!(
            verify(&r, &v2_sha512, skey.as_bytes()),
            Some(SigVersion::V2)
        );
        assert_eq!(verify(&r, &v5, skey.as_bytes()), Some(SigVersion::V5));
        // The wrong secret, another parameter value, another date, another path.
        assert_eq!(verify(&r, &v5, b"wrong"), None);
        let mut other = p.clone();
        other[0].1.push('!');
        assert_eq!(verify(&get(&other, &[]), &v2_sha1, skey.as_bytes()), None);
        let later = Signed {
            date: "Tue, 24 Nov 2026 14:00:51 -0000",
            ..r
        };
        assert_eq!(verify(&later, &v5, skey.as_bytes()), None);
        let elsewhere = Signed {
            path: "/admin/v1/users/U1",
            ..r
        };
        assert_eq!(verify(&elsewhere, &v2_sha512, skey.as_bytes()), None);
    }

    #[test]
    fn a_json_body_needs_version_5_and_its_hash_binds_the_body() {
        let skey = "k".repeat(40);
        let body = br#"{"count":"2"}"#;
        let r = Signed {
            method: "POST",
            body,
            json_body: true,
            ..get(&[], &[])
        };
        let v5 = sign(hmac::HMAC_SHA512, &skey, &canonical_v5(&r));
        assert_eq!(verify(&r, &v5, skey.as_bytes()), Some(SigVersion::V5));
        let tampered = Signed {
            body: br#"{"count":"9"}"#,
            ..r
        };
        assert_eq!(verify(&tampered, &v5, skey.as_bytes()), None);
        // Version 2 does not cover a JSON body, so it is refused for one.
        let v2 = sign(hmac::HMAC_SHA512, &skey, &canonical_v2(&r));
        assert_eq!(verify(&r, &v2, skey.as_bytes()), None);
        let v2 = sign(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            &skey,
            &canonical_v2(&r),
        );
        assert_eq!(verify(&r, &v2, skey.as_bytes()), None);
    }

    #[test]
    fn authorization_headers_parse_strictly() {
        let sig = "ab".repeat(20);
        let ok = format!("Basic {}", b64(format!("DIX:{sig}").as_bytes()));
        assert_eq!(parse_authorization(&ok).unwrap().signature.len(), 20);
        for bad in [
            String::new(),
            format!("Bearer {}", b64(format!("DIX:{sig}").as_bytes())),
            format!("Basic {}", b64(b"DIX")),
            format!(
                "Basic {}",
                b64(format!("DIX:{}", "zz".repeat(20)).as_bytes())
            ),
            format!(
                "Basic {}",
                b64(format!("DIX:{}", "ab".repeat(21)).as_bytes())
            ),
            format!("Basic {}", b64(format!(":{sig}").as_bytes())),
            "Basic !!!!".into(),
        ] {
            assert_eq!(parse_authorization(&bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_parse_and_stale_ones_are_refused() {
        let t = parse_date(DATE).unwrap();
        assert_eq!(t, 1_795_528_850);
        assert_eq!(parse_date("Tue, 24 Nov 2026 14:00:50 GMT"), Some(t));
        assert_eq!(parse_date("Tue, 24 Nov 2026 15:00:50 +0100"), Some(t));
        assert_eq!(parse_date("24 Nov 2026 14:00:50 +0000"), Some(t));
        for bad in [
            "",
            "yesterday",
            "Tue, 31 Feb 2026 14:00:50 GMT",
            "Tue, 24 Nov 2026 14:00 GMT",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(date_is_fresh(DATE, t + MAX_SKEW_SECS));
        assert!(date_is_fresh(DATE, t - MAX_SKEW_SECS));
        assert!(!date_is_fresh(DATE, t + MAX_SKEW_SECS + 1));
        assert!(!date_is_fresh(DATE, t - MAX_SKEW_SECS - 1));
        assert!(!date_is_fresh("garbage", t));
    }
}
