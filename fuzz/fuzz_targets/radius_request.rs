//! The RADIUS request path from bytes to a reply (or none): whatever arrives, parsing
//! never panics, and every reply it leads to is one a careful client accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sparekey_radiusd::client;
use sparekey_radiusd::protocol::{self, Answer};

const SECRET: &[u8] = b"fuzzing-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, datagram)) = data.split_first() else { return };
    let require_ma = flags & 1 == 1;
    let Ok(req) = protocol::parse(datagram, SECRET, require_ma) else { return };
    let answer = if flags & 2 == 2 { Answer::Accept } else { Answer::Reject };
    let reply = protocol::reply(&req, answer, SECRET);
    let checked = client::check_reply(&reply, datagram, SECRET).expect("our own reply must verify");
    assert_eq!(checked == client::Reply::Accept, answer == Answer::Accept);
    // Decode, encode, decode: the reply to the same bytes is the same.
    let again = protocol::parse(datagram, SECRET, require_ma).expect("parsed once, parses again");
    assert_eq!(protocol::reply(&again, answer, SECRET), reply);
});
