//! Properties of the pure request code: nothing a client sends makes it panic, and a
//! signature holds for exactly the request it was made for.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use ring::hmac;
use sparekey_admind::http::{self, Parsed};
use sparekey_admind::sign::{self, Authorization, SigVersion, Signed};

fn signed(p: &[(String, String)]) -> Signed<'_> {
    Signed {
        method: "GET",
        host: "api.example",
        path: "/admin/v1/users",
        params: p,
        body: b"",
        json_body: false,
        date: "Tue, 24 Nov 2026 14:00:50 -0000",
        duo_headers: &[],
    }
}

proptest! {
    #[test]
    fn no_input_makes_the_parsers_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), text in ".{0,300}") {
        let _ = http::parse(&bytes);
        let mut framed = b"POST /admin/v1/users HTTP/1.1\r\n".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = http::parse(&framed);
        let _ = http::parse_form(&text);
        let _ = http::unescape(&text);
        let _ = sign::parse_authorization(&text);
        let _ = sign::parse_date(&text);
    }

    #[test]
    fn a_request_parses_back_whole(
        path in "/[a-z0-9_/]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut raw = format!("POST {path}?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        raw.extend_from_slice(&body);
        for cut in [0, raw.len() / 2, raw.len().saturating_sub(1)] {
            if cut < raw.len() {
                prop_assert_eq!(http::parse(&raw[..cut]), Parsed::Incomplete);
            }
        }
        let Parsed::Done(r) = http::parse(&raw) else { panic!("complete request") };
        prop_assert_eq!(r.path, path);
        prop_assert_eq!(r.query, "x=1");
        prop_assert_eq!(r.body, body);
    }

    #[test]
    fn a_signature_covers_every_parameter(
        params in proptest::collection::vec(("[a-z_]{1,8}", ".{0,12}"), 0..6),
        which in any::<prop::sample::Index>(),
        v5 in any::<bool>(),
    ) {
        let params: Vec<(String, String)> = params;
        let skey = b"0123456789012345678901234567890123456789";
        let canon = |s: &Signed<'_>| {
            if v5 {
                sign::canonical_v5(s)
            } else {
                sign::canonical_v2(s)
            }
        };
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, skey), canon(&signed(&params)).as_bytes());
        let auth = Authorization { ikey: "DIX".into(), signature: tag.as_ref().to_vec() };
        let expected = if v5 { SigVersion::V5 } else { SigVersion::V2 };
        prop_assert_eq!(sign::verify(&signed(&params), &auth, skey), Some(expected));
        // Order does not matter; content does.
        let mut reversed = params.clone();
        reversed.reverse();
        prop_assert_eq!(sign::verify(&signed(&reversed), &auth, skey), Some(expected));
        if !params.is_empty() {
            let mut changed = params.clone();
            changed[which.index(params.len())].1.push('!');
            prop_assert_eq!(sign::verify(&signed(&changed), &auth, skey), None);
        }
        let mut added = params.clone();
        added.push(("extra".into(), "1".into()));
        prop_assert_eq!(sign::verify(&signed(&added), &auth, skey), None);
    }
}
