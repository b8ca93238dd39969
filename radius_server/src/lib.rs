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
