//! sparekey-radiusd: a small RADIUS server that answers PAP Access-Requests with the
//! sparekey verifier. `protocol` works on bytes only; `server` moves datagrams; `writer`
//! is the one thread that owns the store and group-commits verifications; `store` keeps
//! that store open, checked and reopened after faults.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod protocol;
pub mod server;
pub mod store;
pub mod writer;

/// Turns transparent huge pages off for this process. mimalloc asks for them, and the
/// first touch of each then clears 2 MiB at once on whichever thread allocates: the writer
/// or a network thread stops for a fraction of a millisecond to several, and every request
/// behind it waits (BENCHMARKS.md, "The writer waited while behind, and huge pages"). A
/// refusal costs latency, not correctness.
pub fn without_huge_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from)
}
