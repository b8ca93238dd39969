//! Benchmarks for sparekey: a RADIUS load generator that any server can be pointed at,
//! and the pieces the comparison scripts need (a store of benchmark users, a responder
//! that does the same packet handling with no store).

#![forbid(unsafe_code)]

pub mod null;
pub mod pauses;
pub mod radius_load;
pub mod rng;
pub mod setup;
pub mod timing;
