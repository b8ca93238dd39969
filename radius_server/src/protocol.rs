//! RADIUS over bytes, with no socket in sight: decode and check a request, and encode a
//! reply. The UDP loop only moves datagrams through these functions.
//!
//! A request is read in one pass over the datagram, without copying it into a list of
//! attributes: only the few attributes the server uses are looked at (User-Name,
//! User-Password, Calling-Station-Id, NAS-Identifier, NAS-IP-Address, NAS-IPv6-Address,
//! Proxy-State and Message-Authenticator). The checks are RFC 2865's framing, the
//! Message-Authenticator on requests (RFC 3579, HMAC-MD5), and a reply whose first
//! attribute is a Message-Authenticator (the BlastRADIUS fix, CVE-2024-3596), with the
//! response authenticator computed over the final attributes.

use std::net::{Ipv4Addr, Ipv6Addr};

use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Largest RADIUS packet (RFC 2865 section 3).
pub const MAX_PACKET: usize = 4096;
const HEADER: usize = 20;
const USER_NAME: u8 = 1;
const USER_PASSWORD: u8 = 2;
const NAS_IP_ADDRESS: u8 = 4;
const CALLING_STATION_ID: u8 = 31;
const NAS_IDENTIFIER: u8 = 32;
const PROXY_STATE: u8 = 33;
const MESSAGE_AUTHENTICATOR: u8 = 80;
const NAS_IPV6_ADDRESS: u8 = 95;
const ACCESS_REQUEST: u8 = 1;
const ACCESS_ACCEPT: u8 = 2;
const ACCESS_REJECT: u8 = 3;
const STATUS_SERVER: u8 = 12;
/// Longest User-Password value (RFC 2865 section 5.2).
const MAX_PASSWORD: usize = 128;

/// Why a datagram gets no answer. Each is counted; none is told to the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Too short, too long, a length field that lies, or broken attributes.
    Malformed,
    /// A packet code this server does not serve (accounting, CoA, replies...).
    UnsupportedCode,
    /// No Message-Authenticator where one is required.
    NoMessageAuthenticator,
    /// A Message-Authenticator that does not verify: a forgery or a wrong shared secret.
    BadMessageAuthenticator,
    /// A User-Password attribute of an impossible length.
    BadUserPassword,
}

impl Drop {
    /// The counter's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnsupportedCode => "unsupported_code",
            Drop::NoMessageAuthenticator => "no_message_authenticator",
            Drop::BadMessageAuthenticator => "bad_message_authenticator",
            Drop::BadUserPassword => "bad_user_password",
        }
    }
}

/// A client's shared secret, with what every packet needs from it computed once: the
/// HMAC-MD5 key schedule (the inner and outer padded keys) and the MD5 state after the
/// secret, which hides User-Password. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SharedSecret {
    secret: Zeroizing<Vec<u8>>,
    hmac: hmac::Hmac<Md5>,
    md5: Md5,
}

impl SharedSecret {
    /// Prepares `secret` for use.
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let hmac =
            <hmac::Hmac<Md5> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        SharedSecret {
            secret: Zeroizing::new(secret.to_vec()),
            hmac,
            md5: Md5::new().chain_update(secret),
        }
    }

    /// HMAC-MD5 over the concatenation of `parts`.
    fn hmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.hmac.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// A PAP login: the whole password is the code.
#[derive(Debug)]
pub struct Login {
    /// User-Name, lossily decoded (a name that is not UTF-8 matches no user).
    pub user_name: String,
    /// The decrypted User-Password; `None` for CHAP, EAP and other methods, which hashed
    /// codes cannot serve.
    pub password: Option<Zeroizing<String>>,
    /// Calling-Station-Id, sanitized.
    pub station: Option<String>,
    /// NAS-Identifier (sanitized), else NAS-IP-Address or NAS-IPv6-Address.
    pub nas: Option<String>,
}

/// What the request asks.
#[derive(Debug)]
pub enum Kind {
    /// Access-Request.
    Access(Login),
    /// Status-Server (RFC 5997): a health check.
    Status,
}

/// What a reply needs from its request: identifier, request authenticator, and the
/// Proxy-State attributes to copy back.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    identifier: u8,
    authenticator: [u8; 16],
    /// The request's Proxy-State attributes as they arrived (type, length and value), in
    /// order: they go into the reply unchanged. Empty (and unallocated) when there are none.
    proxy_states: Vec<u8>,
}

impl ReplyTo {
    /// The packet identifier.
    pub fn identifier(&self) -> u8 {
        self.identifier
    }

    /// The request authenticator.
    pub fn authenticator(&self) -> &[u8; 16] {
        &self.authenticator
    }
}

/// A request that passed every check.
#[derive(Debug)]
pub struct Request {
    /// Access or Status.
    pub kind: Kind,
    /// What the reply is built from.
    pub reply_to: ReplyTo,
}

impl Request {
    /// The packet identifier.
    pub fn identifier(&self) -> u8 {
        self.reply_to.identifier
    }
}

/// Decodes and checks one datagram from a known client, with its secret as bytes.
/// [`decode`] does the same with the secret prepared once per client.
pub fn parse(
    datagram: &[u8],
    secret: &[u8],
    require_message_authenticator: bool,
) -> Result<Request, Drop> {
    decode(
        datagram,
        &SharedSecret::new(secret),
        require_message_authenticator,
    )
}

/// The attributes the server reads, as slices of the datagram: the first of each kind,
/// how many User-Name and User-Password attributes there were, and where the
/// Message-Authenticator's value is.
#[derive(Default)]
struct Seen<'a> {
    user_names: usize,
    user_name: &'a [u8],
    passwords: usize,
    password: &'a [u8],
    station: Option<&'a [u8]>,
    nas_identifier: Option<&'a [u8]>,
    nas_ip: Option<&'a [u8]>,
    nas_ipv6: Option<&'a [u8]>,
    message_authenticator: Option<usize>,
    /// A Message-Authenticator of the wrong length, or more than one.
    bad_message_authenticator: bool,
    proxy_states: Vec<u8>,
}

/// Decodes and checks one datagram from a known client.
pub fn decode(
    datagram: &[u8],
    secret: &SharedSecret,
    require_message_authenticator: bool,
) -> Result<Request, Drop> {
    if datagram.len() < HEADER || datagram.len() > MAX_PACKET {
        return Err(Drop::Malformed);
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if !(HEADER..=datagram.len()).contains(&len) {
        return Err(Drop::Malformed);
    }
    // Octets past the length field are padding (RFC 2865 section 3) and are ignored.
    let bytes = &datagram[..len];
    let code = bytes[0];
    if code != ACCESS_REQUEST && code != STATUS_SERVER {
        return Err(Drop::UnsupportedCode);
    }
    let seen = attributes(bytes)?;
    if seen.bad_message_authenticator {
        return Err(Drop::Malformed);
    }
    check_message_authenticator(
        bytes,
        seen.message_authenticator,
        secret,
        require_message_authenticator || code == STATUS_SERVER,
    )?;
    let mut authenticator = [0u8; 16];
    authenticator.copy_from_slice(&bytes[4..HEADER]);
    let kind = if code == STATUS_SERVER {
        Kind::Status
    } else {
        Kind::Access(login(&seen, secret, &authenticator)?)
    };
    Ok(Request {
        kind,
        reply_to: ReplyTo {
            identifier: bytes[1],
            authenticator,
            proxy_states: seen.proxy_states,
        },
    })
}

/// Walks the attributes once. They must tile the packet exactly, each at least two octets
/// long (RFC 2865 section 5).
fn attributes(bytes: &[u8]) -> Result<Seen<'_>, Drop> {
    let mut seen = Seen::default();
    let mut i = HEADER;
    while i < bytes.len() {
        if bytes.len() - i < 2 {
            return Err(Drop::Malformed);
        }
        let (typ, n) = (bytes[i], usize::from(bytes[i + 1]));
        if n < 2 || n > bytes.len() - i {
            return Err(Drop::Malformed);
        }
        let value = &bytes[i + 2..i + n];
        match typ {
            USER_NAME => {
                seen.user_names += 1;
                seen.user_name = value;
            }
            USER_PASSWORD => {
                seen.passwords += 1;
                seen.password = value;
            }
            CALLING_STATION_ID => {
                seen.station.get_or_insert(value);
            }
            NAS_IDENTIFIER => {
                seen.nas_identifier.get_or_insert(value);
            }
            NAS_IP_ADDRESS => {
                seen.nas_ip.get_or_insert(value);
            }
            NAS_IPV6_ADDRESS => {
                seen.nas_ipv6.get_or_insert(value);
            }
            PROXY_STATE => seen.proxy_states.extend_from_slice(&bytes[i..i + n]),
            MESSAGE_AUTHENTICATOR => {
                if n != 18 || seen.message_authenticator.is_some() {
                    seen.bad_message_authenticator = true;
                }
                seen.message_authenticator = Some(i + 2);
            }
            _ => {}
        }
        i += n;
    }
    Ok(seen)
}

/// Verifies the Message-Authenticator at `at` (its value's offset): HMAC-MD5 over the
/// packet with the value zeroed, compared in constant time.
fn check_message_authenticator(
    bytes: &[u8],
    at: Option<usize>,
    secret: &SharedSecret,
    required: bool,
) -> Result<(), Drop> {
    let Some(at) = at else {
        return if required {
            Err(Drop::NoMessageAuthenticator)
        } else {
            Ok(())
        };
    };
    // The HMAC covers the packet with the attribute's value as zeros; no copy is made.
    let expected = secret.hmac(&[&bytes[..at], &[0; 16], &bytes[at + 16..]]);
    if bool::from(expected.ct_eq(&bytes[at..at + 16])) {
        Ok(())
    } else {
        Err(Drop::BadMessageAuthenticator)
    }
}

fn text(value: &[u8]) -> String {
    sparekey::audit::sanitize(&String::from_utf8_lossy(value), 253)
}

fn login(seen: &Seen<'_>, secret: &SharedSecret, authenticator: &[u8; 16]) -> Result<Login, Drop> {
    if seen.user_names != 1 || seen.user_name.is_empty() {
        return Err(Drop::Malformed);
    }
    let password = match seen.passwords {
        0 => None,
        1 => Some(unhide_password(seen.password, secret, authenticator)?),
        _ => return Err(Drop::Malformed),
    };
    let nas = seen.nas_identifier.map(text).or_else(|| {
        seen.nas_ip
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(|b| Ipv4Addr::from(b).to_string())
            .or_else(|| {
                seen.nas_ipv6
                    .and_then(|v| <[u8; 16]>::try_from(v).ok())
                    .map(|b| Ipv6Addr::from(b).to_string())
            })
    });
    Ok(Login {
        user_name: String::from_utf8_lossy(seen.user_name).into_owned(),
        password,
        station: seen.station.map(text),
        nas,
    })
}

/// Recovers a User-Password (RFC 2865 section 5.2): each 16-octet block is XORed with
/// MD5(secret || previous ciphertext block), the first with the request authenticator;
/// the password ends at the first NUL of the padding.
fn unhide_password(
    hidden: &[u8],
    secret: &SharedSecret,
    authenticator: &[u8; 16],
) -> Result<Zeroizing<String>, Drop> {
    if hidden.len() < 16
        || hidden.len() > MAX_PASSWORD
        || hidden.len() % 16 != 0
        || secret.secret.is_empty()
    {
        return Err(Drop::BadUserPassword);
    }
    let mut plain = Zeroizing::new([0u8; MAX_PASSWORD]);
    let mut previous: &[u8] = authenticator;
    for (i, block) in hidden.chunks_exact(16).enumerate() {
        let key = secret.md5.clone().chain_update(previous).finalize();
        for (j, (c, k)) in block.iter().zip(key.iter()).enumerate() {
            plain[i * 16 + j] = c ^ k;
        }
        previous = block;
    }
    let plain = &plain[..hidden.len()];
    let end = plain.iter().position(|b| *b == 0).unwrap_or(plain.len());
    Ok(Zeroizing::new(
        String::from_utf8_lossy(&plain[..end]).into_owned(),
    ))
}

/// The answer to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Access-Accept.
    Accept,
    /// Access-Reject.
    Reject,
}

/// Encodes the reply to `req` with the secret as bytes; see [`encode_reply`].
pub fn reply(req: &Request, answer: Answer, secret: &[u8]) -> Vec<u8> {
    encode_reply(&req.reply_to, answer, &SharedSecret::new(secret))
}

/// Encodes a reply: Message-Authenticator first, then the request's Proxy-State
/// attributes in order, and nothing that says why. A reply that would not fit in a
/// RADIUS packet (a request without a Message-Authenticator and nearly 4096 octets of
/// Proxy-State) comes back empty, and an empty reply is not sent.
pub fn encode_reply(to: &ReplyTo, answer: Answer, secret: &SharedSecret) -> Vec<u8> {
    let len = HEADER + 18 + to.proxy_states.len();
    if len > MAX_PACKET {
        return Vec::new();
    }
    let code = match answer {
        Answer::Accept => ACCESS_ACCEPT,
        Answer::Reject => ACCESS_REJECT,
    };
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&[code, to.identifier]);
    // `len` is at most MAX_PACKET, so it fits in 16 bits.
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.extend_from_slice(&to.authenticator);
    b.extend_from_slice(&[MESSAGE_AUTHENTICATOR, 18]);
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&to.proxy_states);
    // Both checksums are computed with the request authenticator in the header: the
    // Message-Authenticator first (RFC 3579 section 3.2), then the response authenticator
    // over the packet with it in place, followed by the secret (RFC 2865 section 3).
    let ma = secret.hmac(&[&b]);
    b[HEADER + 2..HEADER + 18].copy_from_slice(&ma);
    let response = Md5::new()
        .chain_update(&b)
        .chain_update(&*secret.secret)
        .finalize();
    b[4..HEADER].copy_from_slice(&response);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::hmac_md5;

    const SECRET: &[u8] = b"testing123-testing123";

    fn request(
        code: u8,
        id: u8,
        auth: [u8; 16],
        attrs: &[(u8, Vec<u8>)],
        secret: &[u8],
        ma: bool,
    ) -> Vec<u8> {
        let attrs: Vec<(u8, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        crate::client::request(code, id, auth, &attrs, secret, ma)
    }

    fn hide(password: &[u8], secret: &[u8], auth: &[u8; 16]) -> Vec<u8> {
        crate::client::hide_password(password, secret, auth)
    }

    fn pap(user: &str, code: &str, id: u8, secret: &[u8]) -> Vec<u8> {
        crate::client::pap(id, [id.wrapping_mul(7); 16], user, code, secret)
    }

    #[test]
    fn a_pap_request_decodes() {
        let auth = [9; 16];
        let b = request(
            ACCESS_REQUEST,
            42,
            auth,
            &[
                (USER_NAME, b"alice".to_vec()),
                (USER_PASSWORD, hide(b"123456789", SECRET, &auth)),
                (CALLING_STATION_ID, b"10.0.0.7".to_vec()),
                (NAS_IP_ADDRESS, vec![192, 0, 2, 1]),
                (PROXY_STATE, b"one".to_vec()),
                (PROXY_STATE, b"two".to_vec()),
            ],
            SECRET,
            true,
        );
        let r = parse(&b, SECRET, true).unwrap();
        assert_eq!(r.identifier(), 42);
        let Kind::Access(l) = &r.kind else {
            panic!("not access")
        };
        assert_eq!(l.user_name, "alice");
        assert_eq!(l.password.as_deref().map(String::as_str), Some("123456789"));
        assert_eq!(l.station.as_deref(), Some("10.0.0.7"));
        assert_eq!(l.nas.as_deref(), Some("192.0.2.1"));
        assert_eq!(
            r.reply_to.proxy_states,
            [
                PROXY_STATE,
                5,
                b'o',
                b'n',
                b'e',
                PROXY_STATE,
                5,
                b't',
                b'w',
                b'o'
            ]
        );
        assert_eq!(r.reply_to.authenticator(), &auth);
    }

    #[test]
    fn message_authenticator_is_required_and_checked() {
        let good = pap("alice", "123456789", 1, SECRET);
        assert!(parse(&good, SECRET, true).is_ok());
        assert_eq!(
            parse(&good, b"wrong-secret", true).unwrap_err(),
            Drop::BadMessageAuthenticator
        );
        let mut forged = good.clone();
        forged[30] ^= 1;
        assert_eq!(
            parse(&forged, SECRET, true).unwrap_err(),
            Drop::BadMessageAuthenticator
        );
        let auth = [1; 16];
        let bare = request(
            ACCESS_REQUEST,
            1,
            auth,
            &[
                (USER_NAME, b"a".to_vec()),
                (USER_PASSWORD, hide(b"123456", SECRET, &auth)),
            ],
            SECRET,
            false,
        );
        assert_eq!(
            parse(&bare, SECRET, true).unwrap_err(),
            Drop::NoMessageAuthenticator
        );
        assert!(
            parse(&bare, SECRET, false).is_ok(),
            "allowed when the client is configured so"
        );
        let status = request(STATUS_SERVER, 1, auth, &[], SECRET, false);
        assert_eq!(
            parse(&status, SECRET, false).unwrap_err(),
            Drop::NoMessageAuthenticator,
            "RFC 5997 requires it"
        );
    }

    #[test]
    fn bad_datagrams_are_dropped() {
        let good = pap("alice", "123456789", 1, SECRET);
        let mut cases: Vec<(Vec<u8>, Drop)> = vec![
            (good[..19].to_vec(), Drop::Malformed),
            (good[..good.len() - 1].to_vec(), Drop::Malformed),
            (vec![0; MAX_PACKET + 1], Drop::Malformed),
        ];
        let mut long_len = good.clone();
        long_len[2..4].copy_from_slice(&((good.len() + 1) as u16).to_be_bytes());
        cases.push((long_len, Drop::Malformed));
        let mut short_len = good.clone();
        short_len[2..4].copy_from_slice(&19u16.to_be_bytes());
        cases.push((short_len, Drop::Malformed));
        for code in [2u8, 3, 4, 11, 40, 255] {
            let mut c = good.clone();
            c[0] = code;
            cases.push((c, Drop::UnsupportedCode));
        }
        for bad_len in [0u8, 1] {
            let mut b = vec![ACCESS_REQUEST, 1, 0, 0];
            b.extend_from_slice(&[0; 16]);
            b.extend_from_slice(&[USER_NAME, bad_len, b'x', b'y']);
            let l = (b.len() as u16).to_be_bytes();
            b[2..4].copy_from_slice(&l);
            cases.push((b, Drop::Malformed));
        }
        let auth = [3; 16];
        let long_pw = request(
            ACCESS_REQUEST,
            1,
            auth,
            &[(USER_NAME, b"a".to_vec()), (USER_PASSWORD, vec![7; 144])],
            SECRET,
            true,
        );
        cases.push((long_pw, Drop::BadUserPassword));
        let odd_pw = request(
            ACCESS_REQUEST,
            1,
            auth,
            &[(USER_NAME, b"a".to_vec()), (USER_PASSWORD, vec![7; 17])],
            SECRET,
            true,
        );
        cases.push((odd_pw, Drop::BadUserPassword));
        let no_name = request(
            ACCESS_REQUEST,
            1,
            auth,
            &[(USER_PASSWORD, hide(b"123456", SECRET, &auth))],
            SECRET,
            true,
        );
        cases.push((no_name, Drop::Malformed));
        for (i, (bytes, why)) in cases.iter().enumerate() {
            assert_eq!(parse(bytes, SECRET, true).unwrap_err(), *why, "case {i}");
        }
        // Padding past the length field is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0xff; 10]);
        assert!(parse(&padded, SECRET, true).is_ok());
    }

    #[test]
    fn chap_and_eap_requests_have_no_password() {
        let auth = [5; 16];
        let chap = request(
            ACCESS_REQUEST,
            1,
            auth,
            &[(USER_NAME, b"a".to_vec()), (3, vec![1; 17])],
            SECRET,
            true,
        );
        let r = parse(&chap, SECRET, true).unwrap();
        assert!(matches!(&r.kind, Kind::Access(l) if l.password.is_none()));
    }

    #[test]
    fn replies_carry_a_valid_message_authenticator_first_and_the_proxy_states() {
        let auth = [9; 16];
        let b = request(
            ACCESS_REQUEST,
            42,
            auth,
            &[
                (USER_NAME, b"alice".to_vec()),
                (USER_PASSWORD, hide(b"123456789", SECRET, &auth)),
                (PROXY_STATE, b"one".to_vec()),
                (PROXY_STATE, b"two".to_vec()),
            ],
            SECRET,
            true,
        );
        let r = parse(&b, SECRET, true).unwrap();
        for (answer, code) in [(Answer::Accept, 2u8), (Answer::Reject, 3)] {
            let out = reply(&r, answer, SECRET);
            assert_eq!((out[0], out[1]), (code, 42));
            assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])), out.len());
            assert_eq!(
                (out[20], out[21]),
                (MESSAGE_AUTHENTICATOR, 18),
                "Message-Authenticator comes first"
            );
            assert_eq!(
                &out[38..],
                &[
                    PROXY_STATE,
                    5,
                    b'o',
                    b'n',
                    b'e',
                    PROXY_STATE,
                    5,
                    b't',
                    b'w',
                    b'o'
                ]
            );
            // The Message-Authenticator is computed with the request authenticator in place.
            let mut check = out.clone();
            check[4..20].copy_from_slice(&auth);
            check[22..38].fill(0);
            assert_eq!(hmac_md5(SECRET, &check), out[22..38]);
            let mut response = Md5::new();
            response.update(&out[..4]);
            response.update(auth);
            response.update(&out[20..]);
            response.update(SECRET);
            assert_eq!(
                &response.finalize()[..],
                &out[4..20],
                "response authenticator"
            );
            let expected = if answer == Answer::Accept {
                crate::client::Reply::Accept
            } else {
                crate::client::Reply::Reject
            };
            assert_eq!(crate::client::check_reply(&out, &b, SECRET), Ok(expected));
        }
    }

    #[test]
    fn passwords_of_several_blocks_decode_and_end_at_the_first_nul() {
        let auth = [4; 16];
        for pw in ["123456", "1234567890123456", "12345678901234567890"] {
            let b = request(
                ACCESS_REQUEST,
                3,
                auth,
                &[
                    (USER_NAME, b"bob".to_vec()),
                    (USER_PASSWORD, hide(pw.as_bytes(), SECRET, &auth)),
                ],
                SECRET,
                true,
            );
            let r = parse(&b, SECRET, true).unwrap();
            let Kind::Access(l) = &r.kind else {
                panic!("not access")
            };
            assert_eq!(l.password.as_deref().map(String::as_str), Some(pw));
        }
        // The longest value RFC 2865 allows: 128 octets.
        let long = "7".repeat(128);
        let b = request(
            ACCESS_REQUEST,
            3,
            auth,
            &[
                (USER_NAME, b"bob".to_vec()),
                (USER_PASSWORD, hide(long.as_bytes(), SECRET, &auth)),
            ],
            SECRET,
            true,
        );
        let r = parse(&b, SECRET, true).unwrap();
        assert!(matches!(&r.kind, Kind::Access(l) if l.password.as_deref() == Some(&long)));
    }

    #[test]
    fn the_nas_is_its_identifier_else_its_address() {
        let nas_of = |attrs: &[(u8, Vec<u8>)]| {
            let auth = [6; 16];
            let mut all = vec![(USER_NAME, b"carol".to_vec())];
            all.extend_from_slice(attrs);
            let r = parse(
                &request(ACCESS_REQUEST, 1, auth, &all, SECRET, true),
                SECRET,
                true,
            )
            .unwrap();
            let Kind::Access(l) = r.kind else {
                panic!("not access")
            };
            l.nas
        };
        let v6: Vec<u8> = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        assert_eq!(nas_of(&[]), None);
        assert_eq!(
            nas_of(&[
                (NAS_IP_ADDRESS, vec![192, 0, 2, 1]),
                (NAS_IDENTIFIER, b"vpn\n1".to_vec())
            ])
            .as_deref(),
            Some("vpn?1"),
            "sanitized"
        );
        assert_eq!(
            nas_of(&[
                (NAS_IPV6_ADDRESS, v6.clone()),
                (NAS_IP_ADDRESS, vec![192, 0, 2, 1])
            ])
            .as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(
            nas_of(&[(NAS_IP_ADDRESS, vec![192, 0, 2]), (NAS_IPV6_ADDRESS, v6)]).as_deref(),
            Some("2001:db8::1"),
            "a NAS-IP-Address of the wrong length is not an address"
        );
    }

    #[test]
    fn message_authenticators_of_the_wrong_shape_are_malformed() {
        let good = pap("alice", "123456789", 1, SECRET);
        let mut twice = good.clone();
        twice.extend_from_slice(&[MESSAGE_AUTHENTICATOR, 18]);
        twice.extend_from_slice(&[0; 16]);
        let l = (twice.len() as u16).to_be_bytes();
        twice[2..4].copy_from_slice(&l);
        assert_eq!(parse(&twice, SECRET, true).unwrap_err(), Drop::Malformed);
        let auth = [2; 16];
        let short = request(
            ACCESS_REQUEST,
            1,
            auth,
            &[
                (USER_NAME, b"a".to_vec()),
                (MESSAGE_AUTHENTICATOR, vec![0; 15]),
            ],
            SECRET,
            false,
        );
        assert_eq!(parse(&short, SECRET, false).unwrap_err(), Drop::Malformed);
    }

    #[test]
    fn status_server_is_answered_with_an_accept() {
        let auth = [8; 16];
        let b = request(
            STATUS_SERVER,
            77,
            auth,
            &[(PROXY_STATE, vec![])],
            SECRET,
            true,
        );
        let r = parse(&b, SECRET, true).unwrap();
        assert!(matches!(r.kind, Kind::Status));
        let out = reply(&r, Answer::Accept, SECRET);
        assert_eq!(
            &out[38..],
            &[PROXY_STATE, 2],
            "an empty Proxy-State is copied too"
        );
        assert_eq!(
            crate::client::check_reply(&out, &b, SECRET),
            Ok(crate::client::Reply::Accept)
        );
    }

    #[test]
    fn a_reply_too_large_for_a_packet_is_empty() {
        let auth = [1; 16];
        let mut attrs = vec![(USER_NAME, b"a".to_vec())];
        // 20 + 3 + 16 * 255 = 4103 > 4096: fifteen full Proxy-States and one of 240.
        for _ in 0..15 {
            attrs.push((PROXY_STATE, vec![1; 253]));
        }
        attrs.push((PROXY_STATE, vec![1; 251 - 18]));
        let b = request(ACCESS_REQUEST, 1, auth, &attrs, SECRET, false);
        assert!(b.len() <= MAX_PACKET);
        let r = parse(&b, SECRET, false).unwrap();
        assert!(reply(&r, Answer::Reject, SECRET).is_empty());
    }

    #[test]
    fn a_prepared_secret_gives_the_same_answers() {
        let keyed = SharedSecret::new(SECRET);
        assert_eq!(format!("{keyed:?}"), "SharedSecret(<redacted>)");
        let b = pap("alice", "123456789", 9, SECRET);
        let one = decode(&b, &keyed, true).unwrap();
        let two = parse(&b, SECRET, true).unwrap();
        assert_eq!(
            encode_reply(&one.reply_to, Answer::Accept, &keyed),
            reply(&two, Answer::Accept, SECRET)
        );
        assert_eq!(hmac_md5(SECRET, b"abc"), keyed.hmac(&[b"a", b"bc"]));
    }
}
