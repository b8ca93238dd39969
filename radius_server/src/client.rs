//! The client side of the protocol, for tests and the load generator: build PAP
//! Access-Requests and Status-Servers with a Message-Authenticator, and check replies the
//! way a careful NAS does.

use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Attribute types used here.
pub mod attr {
    /// User-Name.
    pub const USER_NAME: u8 = 1;
    /// User-Password.
    pub const USER_PASSWORD: u8 = 2;
    /// CHAP-Password.
    pub const CHAP_PASSWORD: u8 = 3;
    /// NAS-IP-Address.
    pub const NAS_IP_ADDRESS: u8 = 4;
    /// Calling-Station-Id.
    pub const CALLING_STATION_ID: u8 = 31;
    /// NAS-Identifier.
    pub const NAS_IDENTIFIER: u8 = 32;
    /// Proxy-State.
    pub const PROXY_STATE: u8 = 33;
    /// Message-Authenticator.
    pub const MESSAGE_AUTHENTICATOR: u8 = 80;
}

/// Packet codes used here.
pub mod code {
    /// Access-Request.
    pub const ACCESS_REQUEST: u8 = 1;
    /// Access-Accept.
    pub const ACCESS_ACCEPT: u8 = 2;
    /// Access-Reject.
    pub const ACCESS_REJECT: u8 = 3;
    /// Status-Server.
    pub const STATUS_SERVER: u8 = 12;
}

pub(crate) fn hmac_md5(secret: &[u8], data: &[u8]) -> [u8; 16] {
    hmac_md5_parts(secret, &[data])
}

/// HMAC-MD5 over the concatenation of `parts`, without building it.
pub(crate) fn hmac_md5_parts(secret: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <hmac::Hmac<Md5> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Builds a request: header, a Message-Authenticator first if `with_ma`, then `attrs` in
/// order. Attribute values longer than 253 bytes are the caller's mistake and are cut.
pub fn request(
    code: u8,
    id: u8,
    authenticator: [u8; 16],
    attrs: &[(u8, &[u8])],
    secret: &[u8],
    with_ma: bool,
) -> Vec<u8> {
    let mut b = vec![code, id, 0, 0];
    b.extend_from_slice(&authenticator);
    if with_ma {
        b.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
        b.extend_from_slice(&[0; 16]);
    }
    for (t, v) in attrs {
        let v = &v[..v.len().min(253)];
        b.push(*t);
        b.push((v.len() + 2) as u8);
        b.extend_from_slice(v);
    }
    let len = (b.len().min(usize::from(u16::MAX)) as u16).to_be_bytes();
    b[2..4].copy_from_slice(&len);
    if with_ma {
        let m = hmac_md5(secret, &b);
        b[22..38].copy_from_slice(&m);
    }
    b
}

/// Hides a password as RFC 2865 section 5.2 says (padded to 16-octet blocks).
pub fn hide_password(password: &[u8], secret: &[u8], authenticator: &[u8; 16]) -> Vec<u8> {
    let mut padded = password.to_vec();
    padded.resize(password.len().div_ceil(16).max(1) * 16, 0);
    let mut out = Vec::with_capacity(padded.len());
    let mut prev = authenticator.to_vec();
    for chunk in padded.chunks(16) {
        let key = Md5::new()
            .chain_update(secret)
            .chain_update(&prev)
            .finalize();
        let c: Vec<u8> = chunk.iter().zip(key.iter()).map(|(p, k)| p ^ k).collect();
        out.extend_from_slice(&c);
        prev = c;
    }
    out
}

/// A PAP Access-Request with a Message-Authenticator.
pub fn pap(id: u8, authenticator: [u8; 16], user: &str, password: &str, secret: &[u8]) -> Vec<u8> {
    let hidden = hide_password(password.as_bytes(), secret, &authenticator);
    request(
        code::ACCESS_REQUEST,
        id,
        authenticator,
        &[
            (attr::USER_NAME, user.as_bytes()),
            (attr::USER_PASSWORD, &hidden),
        ],
        secret,
        true,
    )
}

/// What a reply said, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Access-Accept.
    Accept,
    /// Access-Reject.
    Reject,
}

/// Checks a reply to `request`: identifier, length, response authenticator, and a valid
/// Message-Authenticator as the first attribute.
pub fn check_reply(reply: &[u8], request: &[u8], secret: &[u8]) -> Result<Reply, String> {
    check_reply_with(reply, request, secret, true)
}

/// [`check_reply`], but with `require_message_authenticator` false a reply without a
/// Message-Authenticator is accepted on its response authenticator alone, as servers
/// from before the BlastRADIUS fixes send them (FreeRADIUS before 3.2.5).
pub fn check_reply_with(
    reply: &[u8],
    request: &[u8],
    secret: &[u8],
    require_message_authenticator: bool,
) -> Result<Reply, String> {
    let min = if require_message_authenticator {
        38
    } else {
        20
    };
    if reply.len() < min || request.len() < 20 {
        return Err(format!("reply of {} bytes is too short", reply.len()));
    }
    if reply[1] != request[1] {
        return Err("identifier differs".into());
    }
    if usize::from(u16::from_be_bytes([reply[2], reply[3]])) != reply.len() {
        return Err("length field differs from the datagram".into());
    }
    let expected = Md5::new()
        .chain_update(&reply[..4])
        .chain_update(&request[4..20])
        .chain_update(&reply[20..])
        .chain_update(secret)
        .finalize();
    if !bool::from(expected.as_slice().ct_eq(&reply[4..20])) {
        return Err("bad response authenticator".into());
    }
    let first_is_ma =
        reply.len() >= 38 && reply[20] == attr::MESSAGE_AUTHENTICATOR && reply[21] == 18;
    if require_message_authenticator && !first_is_ma {
        return Err("Message-Authenticator is not the first attribute".into());
    }
    if first_is_ma {
        // Over the reply with the request authenticator in its header and the
        // attribute's value zeroed, without copying the reply.
        let expected = hmac_md5_parts(
            secret,
            &[
                &reply[..4],
                &request[4..20],
                &reply[20..22],
                &[0; 16],
                &reply[38..],
            ],
        );
        if !bool::from(expected.ct_eq(&reply[22..38])) {
            return Err("bad Message-Authenticator".into());
        }
    }
    match reply[0] {
        code::ACCESS_ACCEPT => Ok(Reply::Accept),
        code::ACCESS_REJECT => Ok(Reply::Reject),
        c => Err(format!("unexpected code {c}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Answer};

    const SECRET: &[u8] = b"client-tests-secret-0123";

    /// Sets the response authenticator of `reply` to request's, as a forger with the
    /// secret would, so that only the Message-Authenticator can catch a change.
    fn reauthenticate(reply: &mut [u8], request: &[u8]) {
        let ra = Md5::new()
            .chain_update(&reply[..4])
            .chain_update(&request[4..20])
            .chain_update(&reply[20..])
            .chain_update(SECRET)
            .finalize();
        reply[4..20].copy_from_slice(&ra);
    }

    #[test]
    fn replies_are_checked_for_both_authenticators() {
        let req = pap(5, [3; 16], "dave", "123456789", SECRET);
        let parsed = protocol::parse(&req, SECRET, true).unwrap_or_else(|_| unreachable!());
        let good = protocol::reply(&parsed, Answer::Reject, SECRET);
        assert_eq!(check_reply(&good, &req, SECRET), Ok(Reply::Reject));
        let mut forged = good.clone();
        forged[0] = code::ACCESS_ACCEPT;
        assert_eq!(
            check_reply(&forged, &req, SECRET),
            Err("bad response authenticator".into())
        );
        reauthenticate(&mut forged, &req);
        assert_eq!(
            check_reply(&forged, &req, SECRET),
            Err("bad Message-Authenticator".into())
        );
        assert!(check_reply(&good, &req, b"another-secret").is_err());
    }
}
