//! `sparekey-admind`: a subset of Duo's Admin API v1 (users, phones, bypass codes) over
//! HTTPS, so that Duo's own tooling (`duo_client`, the DuoSecurity PowerShell module) can
//! issue sparekey codes.
//!
//! `sign` checks Duo's request signatures and `http` reads and writes HTTP/1.1 messages,
//! both as pure functions over bytes; `api` answers a checked request from the store;
//! `server` only moves bytes between sockets and those functions.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod http;
pub mod server;
pub mod sign;
