//! RADIUS over bytes, with no socket in sight: decode and check a request, and encode a
//! reply. The UDP loop only moves datagrams through these functions.
//!
//! Packets and attributes go through the `radius` crate's codec; the checks it does not
//! make are here: Message-Authenticator on requests (RFC 3579, HMAC-MD5), first in every
//! reply (the BlastRADIUS fix, CVE-2024-3596), and the response authenticator computed
//! over the final attributes.

use md5::{Digest, Md5};
use radius::core::avp::AVP;
use radius::core::code::Code;
use radius::core::packet::Packet;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::client::{hmac_md5, hmac_md5_parts};

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
const STATUS_SERVER: u8 = 12;

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

/// A PAP login: the whole password is the code.
#[derive(Debug)]
pub struct Login {
    /// User-Name, lossily decoded (a name that is not UTF-8 matches no user).
    pub user_name: String,
    /// The decrypted User-Password; `None` for CHAP, EAP and other methods, which hashed
    /// codes cannot serve.
    pub password: Option<Zeroizing<String>>,
    /// Calling-Station-Id.
    pub station: Option<String>,
    /// NAS-Identifier, else NAS-IP-Address or NAS-IPv6-Address.
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

/// A request that passed every check.
#[derive(Debug)]
pub struct Request {
    /// Access or Status.
    pub kind: Kind,
    /// The decoded packet, kept to build the reply from.
    packet: Packet,
    /// Proxy-State attributes, in order, to copy into the reply.
    proxy_states: Vec<Vec<u8>>,
}

impl Request {
    /// The packet identifier.
    pub fn identifier(&self) -> u8 {
        self.packet.get_identifier()
    }
}

/// Decodes and checks one datagram from a known client.
pub fn parse(
    datagram: &[u8],
    secret: &[u8],
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
    let packet = Packet::decode(bytes, secret).map_err(|_| Drop::Malformed)?;
    check_message_authenticator(
        bytes,
        secret,
        require_message_authenticator || code == STATUS_SERVER,
    )?;
    let proxy_states = packet
        .lookup_all(PROXY_STATE)
        .into_iter()
        .map(AVP::encode_bytes)
        .collect();
    let kind = if code == STATUS_SERVER {
        Kind::Status
    } else {
        Kind::Access(login(&packet, secret)?)
    };
    Ok(Request {
        kind,
        packet,
        proxy_states,
    })
}

/// Verifies the Message-Authenticator: HMAC-MD5 over the packet with the attribute's
/// value zeroed, compared in constant time.
fn check_message_authenticator(bytes: &[u8], secret: &[u8], required: bool) -> Result<(), Drop> {
    let mut found = None;
    let mut i = HEADER;
    // `Packet::decode` has checked that the attributes tile the packet exactly.
    while i + 1 < bytes.len() {
        let (typ, len) = (bytes[i], usize::from(bytes[i + 1]));
        if typ == MESSAGE_AUTHENTICATOR {
            if len != 18 || found.is_some() {
                return Err(Drop::Malformed);
            }
            found = Some(i + 2);
        }
        i += len.max(2);
    }
    let Some(at) = found else {
        return if required {
            Err(Drop::NoMessageAuthenticator)
        } else {
            Ok(())
        };
    };
    // The HMAC covers the packet with the attribute's value as zeros; no copy is made.
    let expected = hmac_md5_parts(secret, &[&bytes[..at], &[0; 16], &bytes[at + 16..]]);
    if bool::from(expected.ct_eq(&bytes[at..at + 16])) {
        Ok(())
    } else {
        Err(Drop::BadMessageAuthenticator)
    }
}

fn text(p: &Packet, typ: u8) -> Option<String> {
    p.lookup(typ)
        .map(|a| sparekey::audit::sanitize(&String::from_utf8_lossy(&a.encode_bytes()), 253))
}

fn login(p: &Packet, secret: &[u8]) -> Result<Login, Drop> {
    let names = p.lookup_all(USER_NAME);
    if names.len() != 1 || names[0].encode_bytes().is_empty() {
        return Err(Drop::Malformed);
    }
    let user_name = String::from_utf8_lossy(&names[0].encode_bytes()).into_owned();
    let passwords = p.lookup_all(USER_PASSWORD);
    let password = match passwords.as_slice() {
        [] => None,
        [one] => {
            let raw = one.encode_bytes();
            if raw.len() < 16 || raw.len() > 128 || raw.len() % 16 != 0 {
                return Err(Drop::BadUserPassword);
            }
            let plain = Zeroizing::new(
                one.encode_user_password(secret, p.get_authenticator())
                    .map_err(|_| Drop::BadUserPassword)?,
            );
            Some(Zeroizing::new(String::from_utf8_lossy(&plain).into_owned()))
        }
        _ => return Err(Drop::Malformed),
    };
    let nas = text(p, NAS_IDENTIFIER)
        .or_else(|| {
            p.lookup(NAS_IP_ADDRESS)
                .and_then(|a| a.encode_ipv4().ok())
                .map(|ip| ip.to_string())
        })
        .or_else(|| {
            p.lookup(NAS_IPV6_ADDRESS)
                .and_then(|a| a.encode_ipv6().ok())
                .map(|ip| ip.to_string())
        });
    Ok(Login {
        user_name,
        password,
        station: text(p, CALLING_STATION_ID),
        nas,
    })
}

/// The answer to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Access-Accept.
    Accept,
    /// Access-Reject.
    Reject,
}

/// Encodes the reply to `req`: Message-Authenticator first, then the request's Proxy-State
/// attributes in order, and nothing that says why.
pub fn reply(req: &Request, answer: Answer, secret: &[u8]) -> Vec<u8> {
    let code = match answer {
        Answer::Accept => Code::AccessAccept,
        Answer::Reject => Code::AccessReject,
    };
    let mut p = req.packet.make_response_packet(code);
    p.add(AVP::from_bytes(MESSAGE_AUTHENTICATOR, &[0; 16]));
    for s in &req.proxy_states {
        p.add(AVP::from_bytes(PROXY_STATE, s));
    }
    // The request fitted in 4096 octets and the reply carries fewer attributes, so
    // encoding cannot run out of room; if it ever did, an empty reply is dropped.
    let Ok(mut bytes) = p.encode() else {
        return Vec::new();
    };
    let request_authenticator = req.packet.get_authenticator();
    bytes[4..HEADER].copy_from_slice(request_authenticator);
    let ma = hmac_md5(secret, &bytes);
    bytes[HEADER + 2..HEADER + 18].copy_from_slice(&ma);
    let mut h = Md5::new();
    h.update(&bytes[..4]);
    h.update(request_authenticator);
    h.update(&bytes[HEADER..]);
    h.update(secret);
    bytes[4..HEADER].copy_from_slice(&h.finalize());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(r.proxy_states, [b"one".to_vec(), b"two".to_vec()]);
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
            assert!(
                Packet::is_authentic_response(&out, &b, SECRET),
                "response authenticator"
            );
        }
    }
}
