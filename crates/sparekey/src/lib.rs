//! The sparekey verifier library: the model, its policy, code generation, keyed digests,
//! the store, audit and config. Every front end (the CLI, the PAM module, the RADIUS
//! server) links it and calls [`Store::verify`] to decide an attempt.
//!
//! The library opens no socket but a PostgreSQL store's database connection, and knows
//! nothing of PAM items or RADIUS attributes:
//! front ends translate their world into `(login, passcode, Context)` and a [`Verdict`]
//! back into theirs.

#![forbid(unsafe_code)]

pub mod audit;
pub mod clock;
pub mod config;
pub mod digest;
mod error;
pub mod model;
pub mod passcode;
mod random;
pub mod store;
pub mod transfer;
mod verify;

pub use audit::{AuditEvent, AuditFilter, Context, Source};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Policy};
pub use digest::DigestKey;
pub use error::{Error, Result};
pub use model::{
    CodeId, CodeInfo, Device, DeviceId, DeviceKind, Normalization, Status, User, UserId, Username,
};
pub use passcode::Passcode;
pub use store::{
    Attempt, CodeRequest, Issued, IssuedCode, LogSync, NewUser, PurgeReport, Store, UserFilter,
    UserUpdate,
};
pub use verify::{Account, Decision, Reason, Verdict};
