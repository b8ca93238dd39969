//! The library's error type. Front ends decide how each variant reaches a user; none of
//! them ever carries a code value.

use std::path::PathBuf;

/// Everything that can go wrong in the verifier library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read or does not parse.
    #[error("config {}: {message}", file.display())]
    Config {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong, naming the key where there is one.
        message: String,
    },
    /// The key file is missing, has the wrong size or unsafe permissions.
    #[error("key file {}: {message}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The store could not be opened, read or written.
    #[error("store: {0}")]
    Store(String),
    /// A user, device or code that was named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what the store holds (a name already taken, a duplicate code).
    #[error("{0}")]
    Conflict(String),
    /// An argument is malformed or outside its allowed range.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field or argument at fault.
        field: &'static str,
        /// Why it is refused.
        message: String,
    },
    /// A limit would be exceeded (codes per call, codes per user, aliases per user).
    #[error("limit: {0}")]
    Limit(String),
    /// A file could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
    /// An import file has bad rows; every one is listed and nothing was changed.
    #[error("{} bad row(s) in {file}; nothing was changed", rows.len())]
    Import {
        /// The import file's name as given.
        file: String,
        /// Each bad row: line number and why.
        rows: Vec<(u64, String)>,
    },
}

impl Error {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            message: message.into(),
        }
    }

    /// Whether the error means "the thing named does not exist" (exit 1 in the CLI)
    /// rather than a usage, config or store failure (exit 2).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
