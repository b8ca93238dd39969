//! Username, login and passcode parsers: never a panic, and what they accept has the
//! promised shape; a login shaped like a code is never displayed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sparekey::model::{LoginKey, Normalization};
use sparekey::{Passcode, Username};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(u) = Username::parse(&s) {
        assert!(!u.as_str().is_empty() && u.as_str().len() <= sparekey::model::MAX_NAME_LEN);
        assert!(!u.as_str().chars().any(char::is_control));
        assert_eq!(Username::parse(u.as_str()).unwrap(), u, "parsing is idempotent");
    }
    for n in [Normalization::None, Normalization::Simple] {
        if let Some(k) = LoginKey::from_login(&s, n) {
            assert!(!k.as_str().chars().any(char::is_control));
        }
    }
    if let Ok(p) = Passcode::parse(&s) {
        let d = p.expose();
        assert!((6..=20).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(sparekey::audit::display_login(&s), "<redacted>");
        assert!(!format!("{p:?}").contains(d));
    }
    let shown = sparekey::audit::display_login(&s);
    assert!(shown.len() <= 64 || shown == "<redacted>");
});
