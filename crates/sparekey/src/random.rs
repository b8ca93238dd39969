//! Randomness from the operating system: code digits without modulo bias, identifiers.

use crate::error::{Error, Result};

/// Crockford's base-32 alphabet: no I, L, O or U, so identifiers read back unambiguously.
const ID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters after the prefix: 10 for the time in milliseconds, 9 random.
const ID_BODY_LEN: usize = 19;

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

/// `len` random decimal digits. Each comes from one byte below 250 (the largest multiple
/// of 10 that fits), and bytes of 250 or more are thrown away, so every digit is equally
/// likely.
pub(crate) fn digits(len: usize) -> Result<String> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        fill(&mut buf)?;
        for &b in &buf {
            if out.len() == len {
                break;
            }
            if let Some(d) = unbiased_digit(b) {
                out.push(char::from(b'0' + d));
            }
        }
    }
    Ok(out)
}

/// The decimal digit a random byte stands for, or `None` if the byte must be discarded.
fn unbiased_digit(b: u8) -> Option<u8> {
    (b < 250).then_some(b % 10)
}

/// A new identifier: `prefix`, 10 characters of the time in milliseconds (so that rows
/// created together sit together in the store's indexes) and 9 random ones (45 bits).
pub(crate) fn id(prefix: char) -> Result<String> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rnd = [0u8; 8];
    fill(&mut rnd)?;
    let rnd = u64::from_le_bytes(rnd);
    let mut s = String::with_capacity(1 + ID_BODY_LEN);
    s.push(prefix);
    for i in (0..10).rev() {
        s.push(char::from(ID_ALPHABET[((millis >> (5 * i)) & 31) as usize]));
    }
    for i in (0..9).rev() {
        s.push(char::from(ID_ALPHABET[((rnd >> (5 * i)) & 31) as usize]));
    }
    Ok(s)
}

/// Whether `s` has the shape [`id`] produces for `prefix`.
pub(crate) fn looks_like_id(prefix: char, s: &str) -> bool {
    let mut chars = s.chars();
    chars.next() == Some(prefix)
        && s.len() == 1 + ID_BODY_LEN
        && chars.all(|c| c.is_ascii() && ID_ALPHABET.contains(&(c as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_maps_to_each_digit_equally_often() {
        let mut counts = [0u32; 10];
        for b in 0..=255u8 {
            if let Some(d) = unbiased_digit(b) {
                counts[d as usize] += 1;
            }
        }
        assert_eq!(counts, [25; 10]);
    }

    #[test]
    fn digits_have_the_asked_length_and_vary() {
        let a = digits(9).unwrap();
        assert_eq!(a.len(), 9);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        let many: std::collections::HashSet<_> = (0..50).map(|_| digits(9).unwrap()).collect();
        assert!(many.len() > 45);
    }

    #[test]
    fn digit_frequencies_are_flat() {
        let s = digits(100_000).unwrap();
        let mut counts = [0u32; 10];
        for b in s.bytes() {
            counts[(b - b'0') as usize] += 1;
        }
        // Each count is ~Binomial(100000, 0.1): sd ~ 95, so 600 is over six sigma.
        for c in counts {
            assert!((9_400..=10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn ids_have_their_shape() {
        let a = id('U').unwrap();
        assert!(looks_like_id('U', &a), "{a}");
        assert!(!looks_like_id('C', &a));
        assert_ne!(a, id('U').unwrap());
    }
}
