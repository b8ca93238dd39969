//! Randomness from the operating system: code digits without modulo bias, identifiers.

use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Crockford's base-32 alphabet: no I, L, O or U, so identifiers read back unambiguously.
const ID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters after the prefix: 10 for the time in milliseconds, 9 random.
const ID_BODY_LEN: usize = 19;

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

/// Random bytes drawn from the operating system a buffer at a time, for a call that needs
/// many (a new user's ids and codes): one system call instead of one per id and per code.
/// A pool lives only as long as the call that made it. A process-wide one would be
/// copied by `fork` (sshd forks) and hand the same bytes to two processes. The bytes it
/// holds may become code digits, so they are wiped when taken and when it is dropped.
pub(crate) struct Pool {
    buf: [u8; POOL_LEN],
    /// Bytes before this index have been handed out (and wiped).
    next: usize,
}

/// Enough for a user, a device and ten 9-digit codes with their ids in one draw.
const POOL_LEN: usize = 256;

impl Pool {
    /// An empty pool: it draws on first use.
    pub(crate) fn new() -> Self {
        Pool {
            buf: [0; POOL_LEN],
            next: POOL_LEN,
        }
    }

    /// Fills `out` with fresh random bytes, never the same byte twice.
    pub(crate) fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.next == POOL_LEN {
                fill(&mut self.buf)?;
                self.next = 0;
            }
            let n = (out.len() - done).min(POOL_LEN - self.next);
            let src = &mut self.buf[self.next..self.next + n];
            out[done..done + n].copy_from_slice(src);
            src.zeroize();
            self.next += n;
            done += n;
        }
        Ok(())
    }

    /// One random byte.
    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// `len` random decimal digits. Each comes from one byte below 250 (the largest multiple
/// of 10 that fits), and bytes of 250 or more are thrown away, so every digit is equally
/// likely.
pub(crate) fn digits(len: usize) -> Result<String> {
    digits_from(&mut Pool::new(), len)
}

/// [`digits`], drawing from `pool`.
pub(crate) fn digits_from(pool: &mut Pool, len: usize) -> Result<String> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        if let Some(d) = unbiased_digit(pool.byte()?) {
            out.push(char::from(b'0' + d));
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
    id_from(&mut Pool::new(), prefix)
}

/// [`id`], drawing from `pool`.
pub(crate) fn id_from(pool: &mut Pool, prefix: char) -> Result<String> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rnd = [0u8; 8];
    pool.fill(&mut rnd)?;
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
    fn a_pool_never_hands_out_a_byte_twice_and_spans_refills() {
        let mut pool = Pool::new();
        let mut a = [0u8; 200];
        let mut b = [0u8; 200];
        pool.fill(&mut a).unwrap();
        // 56 bytes from the first draw, then 144 from a second one.
        pool.fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(
            pool.buf[..pool.next].iter().all(|&x| x == 0),
            "taken bytes are wiped"
        );
        let digits = digits_from(&mut pool, 1000).unwrap();
        assert_eq!(digits.len(), 1000);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        let id = id_from(&mut pool, 'C').unwrap();
        assert!(looks_like_id('C', &id), "{id}");
    }

    #[test]
    fn ids_have_their_shape() {
        let a = id('U').unwrap();
        assert!(looks_like_id('U', &a), "{a}");
        assert!(!looks_like_id('C', &a));
        assert_ne!(a, id('U').unwrap());
    }
}
