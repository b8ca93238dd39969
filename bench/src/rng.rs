//! xorshift64*: seedable and fast; plenty for choosing users, names, schedules, request
//! authenticators and kill moments. Not for anything secret.

/// The generator's state (never zero).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose state is `state` (made odd, so never zero).
    pub fn with_state(state: u64) -> Self {
        Rng(state | 1)
    }

    /// A generator for `seed`, its bits spread first (small seeds give unrelated streams).
    pub fn new(seed: u64) -> Self {
        Self::with_state(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}
