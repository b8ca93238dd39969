//! sparekey-radiusd: answers RADIUS Access-Requests with sparekey bypass codes.
#![forbid(unsafe_code)]
fn main() {}
