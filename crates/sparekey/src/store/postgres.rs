//! The PostgreSQL backend, for fleets: several RADIUS servers and many PAM hosts sharing
//! one store. It moves the same rows as the SQLite backend, in PostgreSQL types, with its
//! own append-only migrations.
//!
//! **Isolation and locking.** Write transactions run at READ COMMITTED, and [`Tx::user`]
//! inside one locks the user's row (`SELECT ... FOR UPDATE`) until commit. Every rule reads
//! a user through it before it reads or changes their codes, devices or state, so two
//! transactions on one user never interleave: the second waits for the first to commit,
//! and because READ COMMITTED takes a fresh snapshot for each statement, what it reads
//! after the lock (the codes, the failure counter) includes the first one's changes. Under
//! REPEATABLE READ the snapshot would predate the lock, and the loser of a race would have
//! to fail with a serialization error and be retried instead. A batch of attempts
//! ([`super::Store::verify_many`]) locks all its users first, in id order, so that two
//! servers' batches cannot deadlock. Read transactions are REPEATABLE READ, READ ONLY: one
//! snapshot.
//!
//! **Bounded waits.** `busy_timeout_ms` bounds connecting (`connect_timeout`), an
//! unanswered connection (`tcp_user_timeout`), each statement (`statement_timeout`) and
//! each lock wait (`lock_timeout`), so a front end never hangs on the database.
//!
//! **Connection loss.** A connection that fails mid-transaction fails that call, and the
//! caller denies. The next call connects again. A connection found dead when a
//! transaction starts (before anything was done in it) is replaced at once, so the first
//! attempt after the database comes back succeeds.
//!
//! **TLS** (rustls), from the URL's `sslmode`, with libpq's meanings: `disable` (the
//! default here: plain TCP), `require` (encrypted; the server's certificate is not checked,
//! which stops eavesdroppers but not an active man in the middle), `verify-ca` (the chain
//! must lead to a trusted root), `verify-full` (that, and the certificate must name the
//! host in the URL). Trusted roots are the PEM file `sslrootcert` names, else the system's.
//! `prefer` and `allow` are refused: they fall back to plain text without saying so.

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

use super::{AdminKey, Backend, Tx, UserFilter};
use crate::audit::{AuditEvent, AuditFilter, Source};
use crate::config::{PostgresConfig, StoreConfig};
use crate::error::{Error, Result};
use crate::model::{
    CodeId, CodeRecord, Device, DeviceId, Lockout, LoginKey, Normalization, Status, User, UserId,
    Username,
};

/// The schema, one step per entry. Append only: a released step is never edited, because
/// stores in the field have already run it. The same tables as SQLite's, in PostgreSQL
/// types (integers as BIGINT, digests as BYTEA).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    realname        TEXT,
    email           TEXT,
    notes           TEXT,
    aliases         TEXT NOT NULL DEFAULT '[]' CHECK (json_typeof(aliases::json) = 'array'),
    status          TEXT NOT NULL CHECK (status IN ('active', 'bypass', 'disabled')),
    lockout_reason  TEXT,
    lockout_since   BIGINT,
    failed_attempts BIGINT NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    created_at      BIGINT NOT NULL,
    last_login      BIGINT,
    trashed_at      BIGINT
);
CREATE INDEX users_trashed ON users (trashed_at) WHERE trashed_at IS NOT NULL;

-- The normalised keys of usernames and aliases share one key space: a name is unique
-- across both, and two names of one user that normalise alike share a key.
CREATE TABLE logins (
    key     TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX logins_user ON logins (user_id);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('phone', 'token', 'webauthn', 'other')),
    name       TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX devices_user ON devices (user_id);

-- A code is stored only as its keyed digest.
CREATE TABLE codes (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest         BYTEA NOT NULL CHECK (length(digest) = 32),
    scheme         BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     BIGINT,
    uses_remaining BIGINT CHECK (uses_remaining IS NULL OR uses_remaining > 0),
    reuse_count    BIGINT NOT NULL CHECK (reuse_count >= 0),
    UNIQUE (user_id, digest)
);

-- Nothing may extend a code: not its expiry, not its uses, not whose it is.
CREATE FUNCTION codes_never_extended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at
       OR NEW.user_id IS DISTINCT FROM OLD.user_id
       OR NEW.digest IS DISTINCT FROM OLD.digest
       OR NEW.reuse_count IS DISTINCT FROM OLD.reuse_count
       OR (OLD.uses_remaining IS NULL AND NEW.uses_remaining IS NOT NULL)
       OR (OLD.uses_remaining IS NOT NULL
           AND (NEW.uses_remaining IS NULL OR NEW.uses_remaining > OLD.uses_remaining))
    THEN
        RAISE EXCEPTION 'a code''s expiry and uses can never be extended';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER codes_never_extended BEFORE UPDATE ON codes
    FOR EACH ROW EXECUTE FUNCTION codes_never_extended();

CREATE TABLE audit (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    time        BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    user_id     TEXT,
    username    TEXT,
    code_id     TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    src_address TEXT,
    src_station TEXT,
    src_nas     TEXT,
    src_tty     TEXT,
    detail      TEXT
);
CREATE INDEX audit_user ON audit (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX audit_time ON audit (time);
"#,
    // Step 2 (SQLite's step 3). Admin API integration keys. The secret is sealed under a
    // key derived from the key file's (store/admin_keys.rs), so this table alone reveals none.
    r#"
CREATE TABLE admin_keys (
    ikey                TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    role                TEXT NOT NULL
                        CHECK (role IN ('owner', 'administrator', 'user_manager', 'help_desk')),
    may_create_codes    BOOLEAN NOT NULL,
    may_customise_codes BOOLEAN NOT NULL,
    sealed_secret       BYTEA NOT NULL,
    created_at          BIGINT NOT NULL,
    revoked_at          BIGINT
);
CREATE UNIQUE INDEX admin_keys_live_name ON admin_keys (name) WHERE revoked_at IS NULL;
"#,
];

/// The table that records how many [`MIGRATIONS`] steps a database has run.
const VERSION_TABLE: &str = "sparekey_schema";

/// The advisory lock that migrations run under, so that hosts starting at once take turns
/// ("sparekey" in ASCII).
const MIGRATION_LOCK: i64 = 0x7370_6172_656b_6579;

/// How the connection is encrypted and what is checked (the URL's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A URL taken apart: the driver's config, and the TLS settings the driver does not know.
struct Target {
    pg: postgres::Config,
    tls: TlsMode,
    root_cert: Option<PathBuf>,
}

/// Checks a `[store] url` the way connecting will read it.
pub(crate) fn check_url(url: &str) -> std::result::Result<(), String> {
    parse_url(url).map(|_| ())
}

/// The URL with its password (if any) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // A password may also come as a query parameter.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad percent-encoding".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8".to_owned())
}

fn parse_url(url: &str) -> std::result::Result<Target, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a URL starting with postgres:// or postgresql://".into());
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut tls = TlsMode::Disable;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" => {
                tls = match v {
                    "disable" => TlsMode::Disable,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    "prefer" | "allow" => {
                        return Err(format!(
                            "sslmode={v} falls back to plain text silently; use disable, require, verify-ca or verify-full"
                        ));
                    }
                    _ => {
                        return Err(
                            "sslmode: expected disable, require, verify-ca or verify-full".into(),
                        );
                    }
                }
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v)?)),
            "sslcert" | "sslkey" | "sslcrl" | "sslpassword" => {
                return Err(format!("{k} is not supported"));
            }
            _ => rest.push(kv),
        }
    }
    // libpq: with a root certificate, `require` checks the chain like `verify-ca`.
    if tls == TlsMode::Require && root_cert.is_some() {
        tls = TlsMode::VerifyCa;
    }
    rest.push(if tls == TlsMode::Disable {
        "sslmode=disable"
    } else {
        "sslmode=require"
    });
    let url = format!("{base}?{}", rest.join("&"));
    // The driver's messages about a URL do not quote it, so they cannot leak a password.
    let pg = postgres::Config::from_str(&url).map_err(|e| e.to_string())?;
    if pg.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    if pg.get_user().is_none() {
        return Err("names no user (postgres://USER@HOST/DB)".into());
    }
    Ok(Target { pg, tls, root_cert })
}

/// Reads the password file: mode 0600 (or stricter), its first line is the password.
fn read_password(path: &Path) -> Result<Zeroizing<String>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.mode() & 0o077 != 0 {
        return Err(Error::Store(format!(
            "password file {}: group or others may read it (mode {:04o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    let first = text.lines().next().unwrap_or_default();
    if first.is_empty() {
        return Err(Error::Store(format!(
            "password file {}: empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(first.to_owned()))
}

mod tls {
    //! Certificate checks for `require` (none) and `verify-ca` (the chain, not the name);
    //! `verify-full` uses rustls's own verifier unchanged.

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    /// `require`: any certificate, but the handshake's signatures are still checked, so the
    /// session is bound to whoever holds the certificate's key.
    #[derive(Debug)]
    pub struct AnyCertificate(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must lead to a trusted root; the name is not compared.
    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}

/// The rustls client configuration for a TLS mode.
fn tls_config(mode: TlsMode, root_cert: Option<&Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let tls_err = |e: rustls::Error| Error::Store(format!("TLS setup: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    if mode == TlsMode::Require {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::Store(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Store(format!(
                    "sslrootcert {}: no usable certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Error::Store(
                    "no trusted root certificates on this system; name one with sslrootcert".into(),
                ));
            }
        }
    }
    let roots = Arc::new(roots);
    if mode == TlsMode::VerifyCa {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| Error::Store(format!("TLS setup: {e}")))?;
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::ChainOnly(webpki)))
            .with_no_client_auth());
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A PostgreSQL database holding a store.
pub struct PostgresBackend {
    pg: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The URL without its password, for messages.
    name: String,
    client: Option<Client>,
    /// Prepared statements of the current connection, by their SQL.
    statements: HashMap<&'static str, Statement>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("url", &self.name)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

/// Turns a driver error into a store error, with the server's message where there is one.
fn pg_error(e: postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            return Error::Conflict(format!("already in the store ({})", db.message()));
        }
        return Error::Store(format!("postgresql: {}", db.message()));
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    Error::Store(format!("postgresql: {msg}"))
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        pg_error(e)
    }
}

impl PostgresBackend {
    /// Connects to the database a config names and brings its schema up to date. A
    /// database without a store is an error: it is created only by
    /// [`PostgresBackend::create`] (`sparekey init --url`, `sparekey store copy`).
    pub fn open(pg: &PostgresConfig, store: &StoreConfig) -> Result<Self> {
        let mut b = Self::connect_to(pg, store)?;
        if b.version()?.is_none() {
            return Err(Error::Store(format!(
                "{}: holds no sparekey store (create one with `sparekey init --url` or `sparekey store copy`)",
                b.name
            )));
        }
        b.migrate()?;
        Ok(b)
    }

    /// Creates a store's tables in a database that has none; refuses one that has.
    pub fn create(pg: &PostgresConfig, store: &StoreConfig) -> Result<Self> {
        let mut b = Self::connect_to(pg, store)?;
        if b.version()?.is_some() {
            return Err(Error::Store(format!(
                "{}: already holds a sparekey store; refusing to create another",
                b.name
            )));
        }
        b.migrate()?;
        Ok(b)
    }

    /// Opens the store, creating its tables if the database has none yet.
    pub fn open_or_create(pg: &PostgresConfig, store: &StoreConfig) -> Result<Self> {
        let mut b = Self::connect_to(pg, store)?;
        b.migrate()?;
        Ok(b)
    }

    fn connect_to(cfg: &PostgresConfig, store: &StoreConfig) -> Result<Self> {
        let name = cfg.redacted_url();
        let target = parse_url(&cfg.url).map_err(|m| Error::Store(format!("{name}: {m}")))?;
        let mut pg = target.pg;
        if let Some(file) = &cfg.password_file {
            pg.password(read_password(file)?.as_bytes());
        }
        let wait = Duration::from_millis(u64::from(store.busy_timeout_ms));
        pg.connect_timeout(wait)
            .tcp_user_timeout(wait)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("sparekey");
        // Server-side bounds for every statement and lock wait, sent with the startup
        // packet so that they cost no round trip. An idle transaction (a client frozen
        // with a user's row locked) is ended by the server too.
        let ms = store.busy_timeout_ms;
        let bounds = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
            ms.saturating_mul(4).max(60_000)
        );
        let options = match pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {bounds}"),
            _ => bounds,
        };
        pg.options(&options);
        let tls = match target.tls {
            TlsMode::Disable => None,
            mode => Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                mode,
                target.root_cert.as_deref(),
            )?)),
        };
        let mut b = PostgresBackend {
            pg,
            tls,
            name,
            client: None,
            statements: HashMap::new(),
        };
        b.client()?;
        Ok(b)
    }

    /// The connection, made anew if there is none or it has died.
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.statements.clear();
            let c = match &self.tls {
                None => self.pg.connect(NoTls),
                Some(tls) => self.pg.connect(tls.clone()),
            }
            .map_err(|e| match pg_error(e) {
                Error::Store(m) => Error::Store(format!("{}: {m}", self.name)),
                other => other,
            })?;
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Store("no connection".into()))
    }

    /// The schema version, or `None` if the database holds no store.
    fn version(&mut self) -> Result<Option<i64>> {
        let c = self.client()?;
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&VERSION_TABLE])?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let v: i64 = c
            .query_one(&format!("SELECT version FROM {VERSION_TABLE}"), &[])?
            .get(0);
        Ok(Some(v))
    }

    fn migrate(&mut self) -> Result<()> {
        let target = MIGRATIONS.len() as i64;
        if self.version()? == Some(target) {
            return Ok(());
        }
        let name = self.name.clone();
        let c = self.client()?;
        let mut tx = c.transaction()?;
        // Hosts starting at once take turns here; the lock ends with the transaction.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version BIGINT NOT NULL);
             INSERT INTO {VERSION_TABLE} (version)
                 SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {VERSION_TABLE});"
        ))?;
        // Another host may have migrated while this one waited for the lock.
        let current: i64 = tx
            .query_one(&format!("SELECT version FROM {VERSION_TABLE}"), &[])?
            .get(0);
        if current > target {
            return Err(Error::Store(format!(
                "{name}: schema version {current} is newer than this program's ({target})"
            )));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            tx.batch_execute(step)?;
            tx.execute(
                &format!("UPDATE {VERSION_TABLE} SET version = $1"),
                &[&((i + 1) as i64)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Starts a transaction; a connection found dead at this point, before anything was
    /// done, is replaced once.
    fn start(&mut self, write: bool) -> Result<PgTx<'_>> {
        let begin = if write {
            "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        };
        for retry in [true, false] {
            match self.client()?.batch_execute(begin) {
                Ok(()) => break,
                Err(_) if retry && self.client.as_ref().is_some_and(Client::is_closed) => {}
                Err(e) => return Err(pg_error(e)),
            }
        }
        let name = &self.name;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| Error::Store(format!("{name}: no connection")))?;
        Ok(PgTx {
            client,
            statements: &mut self.statements,
            write,
            aborted: false,
            open: true,
        })
    }
}

impl Backend for PostgresBackend {
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
        Ok(Box::new(self.start(true)?))
    }

    fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>> {
        Ok(Box::new(self.start(false)?))
    }

    fn normalization(&mut self) -> Result<Option<Normalization>> {
        let v: Option<String> = self
            .client()?
            .query_opt(
                "SELECT value FROM meta WHERE key = 'username_normalization'",
                &[],
            )?
            .map(|r| r.get(0));
        match v.as_deref() {
            None => Ok(None),
            Some("simple") => Ok(Some(Normalization::Simple)),
            Some("none") => Ok(Some(Normalization::None)),
            Some(other) => Err(Error::Store(format!(
                "unknown username_normalization {other:?} in store"
            ))),
        }
    }

    fn key_check(&mut self) -> Result<Option<String>> {
        Ok(self
            .client()?
            .query_opt("SELECT value FROM meta WHERE key = 'key_check'", &[])?
            .map(|r| r.get(0)))
    }

    fn set_key_check(&mut self, value: &str) -> Result<()> {
        self.client()?.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
            &[&value],
        )?;
        Ok(())
    }

    fn set_normalization(&mut self, n: Normalization) -> Result<()> {
        // First writer wins: two hosts opening a new store at once agree on one value, and
        // the loser's check in `Store::with_backend` then compares against it.
        self.client()?.execute(
            "INSERT INTO meta (key, value) VALUES ('username_normalization', $1)
             ON CONFLICT (key) DO NOTHING",
            &[&n.as_str()],
        )?;
        Ok(())
    }

    fn maintain(&mut self) -> Result<()> {
        // PostgreSQL's autovacuum keeps the tables in shape; there is no log to fold.
        Ok(())
    }
}

/// One transaction on the connection, begun with SQL so that a dead connection can be
/// replaced before it starts. Dropped without [`Tx::commit`], it rolls back.
struct PgTx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<&'static str, Statement>,
    write: bool,
    /// A statement failed outside a savepoint: PostgreSQL has aborted the transaction, and
    /// its COMMIT would quietly roll back, so [`Tx::commit`] refuses instead.
    aborted: bool,
    /// Not yet committed or rolled back.
    open: bool,
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A dead connection fails this at once; the next call reconnects.
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// Text columns cannot hold NUL; a client's string with one is stored with `?` instead.
fn text(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|s| s.replace('\0', "?"))
}

fn u32_of(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Store(format!("corrupt store: {what} {v}")))
}

fn user_row(row: &Row) -> Result<User> {
    let username: String = row.try_get(1)?;
    let lockout = match (
        row.try_get::<_, Option<String>>(6)?,
        row.try_get::<_, Option<i64>>(7)?,
    ) {
        (Some(reason), Some(since)) => Some(Lockout { reason, since }),
        _ => None,
    };
    let status: String = row.try_get(5)?;
    let aliases: String = row.try_get(12)?;
    Ok(User {
        id: UserId::from_string(row.try_get::<_, String>(0)?),
        username: Username::parse(&username)
            .map_err(|_| Error::Store("corrupt store: username".into()))?,
        aliases: serde_json::from_str(&aliases)
            .map_err(|_| Error::Store("corrupt store: aliases".into()))?,
        realname: row.try_get(2)?,
        email: row.try_get(3)?,
        notes: row.try_get(4)?,
        status: status
            .parse::<Status>()
            .map_err(|_| Error::Store(format!("corrupt store: status {status:?}")))?,
        lockout,
        failed_attempts: u32_of(row.try_get(8)?, "failed_attempts")?,
        created_at: row.try_get(9)?,
        last_login: row.try_get(10)?,
        trashed_at: row.try_get(11)?,
    })
}

fn code_row(row: &Row) -> Result<CodeRecord> {
    let digest: Vec<u8> = row.try_get(2)?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| Error::Store("corrupt store: digest".into()))?;
    Ok(CodeRecord {
        id: CodeId::from_string(row.try_get::<_, String>(0)?),
        user_id: UserId::from_string(row.try_get::<_, String>(1)?),
        digest,
        scheme: u32_of(row.try_get(3)?, "scheme")?,
        created_at: row.try_get(4)?,
        created_by: row.try_get(5)?,
        expires_at: row.try_get(6)?,
        uses_remaining: row
            .try_get::<_, Option<i64>>(7)?
            .map(|v| u32_of(v, "uses_remaining"))
            .transpose()?,
        reuse_count: u32_of(row.try_get(8)?, "reuse_count")?,
    })
}

fn device_row(row: &Row) -> Result<Device> {
    let kind: String = row.try_get(2)?;
    Ok(Device {
        id: DeviceId::from_string(row.try_get::<_, String>(0)?),
        user_id: UserId::from_string(row.try_get::<_, String>(1)?),
        kind: kind
            .parse()
            .map_err(|_| Error::Store(format!("corrupt store: device kind {kind:?}")))?,
        name: row.try_get(3)?,
        created_at: row.try_get(4)?,
    })
}

fn audit_row(row: &Row) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: row.try_get(0)?,
        time: row.try_get(1)?,
        actor: row.try_get(2)?,
        action: row.try_get(3)?,
        user_id: row.try_get(4)?,
        username: row.try_get(5)?,
        code_id: row.try_get(6)?,
        outcome: row.try_get(7)?,
        reason: row.try_get(8)?,
        source: Source {
            address: row.try_get(9)?,
            station: row.try_get(10)?,
            nas: row.try_get(11)?,
            tty: row.try_get(12)?,
        },
        detail: row.try_get(13)?,
    })
}

fn aliases_json(u: &User) -> Result<String> {
    serde_json::to_string(&u.aliases).map_err(|e| Error::Store(format!("encoding aliases: {e}")))
}

impl PgTx<'_> {
    /// A prepared statement, from this connection's cache.
    fn st(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(|e| self.failed(e))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Notes that the transaction is aborted, and turns the error into the store's.
    fn failed(&mut self, e: postgres::Error) -> Error {
        self.aborted = true;
        pg_error(e)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(|e| self.failed(e))
    }

    fn exec(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let st = self.st(sql)?;
        self.client.execute(&st, params).map_err(|e| self.failed(e))
    }

    fn rows(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = self.st(sql)?;
        self.client.query(&st, params).map_err(|e| self.failed(e))
    }

    fn opt(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let st = self.st(sql)?;
        self.client
            .query_opt(&st, params)
            .map_err(|e| self.failed(e))
    }

    fn write_logins(&mut self, user: &User, keys: &[LoginKey]) -> Result<()> {
        for key in keys {
            self.exec(
                "INSERT INTO logins (key, user_id) VALUES ($1, $2)",
                &[&key.as_str(), &user.id.as_str()],
            )
            .map_err(|e| match e {
                Error::Conflict(_) => {
                    Error::Conflict(format!("name {} is already used", key.as_str()))
                }
                e => e,
            })?;
        }
        Ok(())
    }

    fn insert_audit(&mut self, e: &AuditEvent, keep_id: bool) -> Result<()> {
        let (actor, action, outcome) = (
            e.actor.replace('\0', "?"),
            e.action.replace('\0', "?"),
            e.outcome.replace('\0', "?"),
        );
        let (user_id, username, code_id, reason) = (
            text(&e.user_id),
            text(&e.username),
            text(&e.code_id),
            text(&e.reason),
        );
        let (address, station, nas, tty, detail) = (
            text(&e.source.address),
            text(&e.source.station),
            text(&e.source.nas),
            text(&e.source.tty),
            text(&e.detail),
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &e.time, &actor, &action, &user_id, &username, &code_id, &outcome, &reason, &address,
            &station, &nas, &tty, &detail,
        ];
        if keep_id {
            params.push(&e.id);
            self.exec(
                "INSERT INTO audit (time, actor, action, user_id, username, code_id, outcome, reason,
                                    src_address, src_station, src_nas, src_tty, detail, id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &params,
            )?;
        } else {
            self.exec(
                "INSERT INTO audit (time, actor, action, user_id, username, code_id, outcome, reason,
                                    src_address, src_station, src_nas, src_tty, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &params,
            )?;
        }
        Ok(())
    }
}

impl Tx for PgTx<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        if self.aborted {
            return Err(Error::Store(
                "postgresql: the transaction failed earlier; nothing was kept".into(),
            ));
        }
        self.open = false;
        self.client.batch_execute("COMMIT").map_err(pg_error)
    }

    fn savepoint(&mut self) -> Result<()> {
        self.batch("SAVEPOINT attempt")
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.batch("RELEASE SAVEPOINT attempt")
    }

    fn rollback_savepoint(&mut self) -> Result<()> {
        self.batch("ROLLBACK TO SAVEPOINT attempt; RELEASE SAVEPOINT attempt")?;
        // Back where the savepoint was taken, before the failure.
        self.aborted = false;
        Ok(())
    }

    fn lock_users(&mut self, keys: &[Option<LoginKey>]) -> Result<()> {
        let keys: Vec<&str> = keys
            .iter()
            .flatten()
            .map(LoginKey::as_str)
            .filter(|k| !k.contains('\0'))
            .collect();
        if keys.is_empty() || !self.write {
            return Ok(());
        }
        // Rows are locked in the order they are returned, so always in id order: two
        // batches that share users wait for each other instead of deadlocking.
        self.rows(
            "SELECT u.id FROM users u JOIN logins l ON l.user_id = u.id
             WHERE l.key = ANY($1) ORDER BY u.id FOR UPDATE OF u",
            &[&keys],
        )?;
        Ok(())
    }

    fn user_id_by_login(&mut self, key: &LoginKey) -> Result<Option<UserId>> {
        if key.as_str().contains('\0') {
            return Ok(None);
        }
        Ok(self
            .opt(
                "SELECT user_id FROM logins WHERE key = $1",
                &[&key.as_str()],
            )?
            .map(|r| r.try_get::<_, String>(0))
            .transpose()?
            .map(UserId::from_string))
    }

    fn user(&mut self, id: &UserId) -> Result<Option<User>> {
        // In a write transaction the row stays locked until commit (see the module docs).
        let row = if self.write {
            self.opt(
                "SELECT id, username, realname, email, notes, status, lockout_reason, lockout_since,
                        failed_attempts, created_at, last_login, trashed_at, aliases
                 FROM users WHERE id = $1 FOR UPDATE",
                &[&id.as_str()],
            )?
        } else {
            self.opt(
                "SELECT id, username, realname, email, notes, status, lockout_reason, lockout_since,
                        failed_attempts, created_at, last_login, trashed_at, aliases
                 FROM users WHERE id = $1",
                &[&id.as_str()],
            )?
        };
        row.as_ref().map(user_row).transpose()
    }

    fn insert_user(&mut self, u: &User, keys: &[LoginKey]) -> Result<()> {
        let aliases = aliases_json(u)?;
        let failed = i64::from(u.failed_attempts);
        self.exec(
            "INSERT INTO users (id, username, realname, email, notes, status, lockout_reason, lockout_since,
                                failed_attempts, created_at, last_login, trashed_at, aliases)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &u.id.as_str(),
                &u.username.as_str(),
                &u.realname,
                &u.email,
                &u.notes,
                &u.status.as_str(),
                &u.lockout.as_ref().map(|l| &l.reason),
                &u.lockout.as_ref().map(|l| l.since),
                &failed,
                &u.created_at,
                &u.last_login,
                &u.trashed_at,
                &aliases,
            ],
        )?;
        self.write_logins(u, keys)
    }

    fn update_user(&mut self, u: &User, keys: &[LoginKey]) -> Result<()> {
        let aliases = aliases_json(u)?;
        self.exec(
            "UPDATE users SET username = $2, realname = $3, email = $4, notes = $5, status = $6, aliases = $7
             WHERE id = $1",
            &[
                &u.id.as_str(),
                &u.username.as_str(),
                &u.realname,
                &u.email,
                &u.notes,
                &u.status.as_str(),
                &aliases,
            ],
        )?;
        self.exec("DELETE FROM logins WHERE user_id = $1", &[&u.id.as_str()])?;
        self.write_logins(u, keys)?;
        self.update_user_state(u)
    }

    fn update_user_state(&mut self, u: &User) -> Result<()> {
        let failed = i64::from(u.failed_attempts);
        self.exec(
            "UPDATE users SET lockout_reason = $2, lockout_since = $3, failed_attempts = $4, last_login = $5,
             trashed_at = $6 WHERE id = $1",
            &[
                &u.id.as_str(),
                &u.lockout.as_ref().map(|l| &l.reason),
                &u.lockout.as_ref().map(|l| l.since),
                &failed,
                &u.last_login,
                &u.trashed_at,
            ],
        )?;
        Ok(())
    }

    fn delete_user(&mut self, id: &UserId) -> Result<()> {
        self.exec("DELETE FROM users WHERE id = $1", &[&id.as_str()])?;
        Ok(())
    }

    fn list_users(&mut self, f: &UserFilter) -> Result<Vec<User>> {
        let status = f.status.map(Status::as_str);
        self.rows(
            "SELECT id, username, realname, email, notes, status, lockout_reason, lockout_since,
                    failed_attempts, created_at, last_login, trashed_at, aliases
             FROM users
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::boolean IS NULL OR (trashed_at IS NOT NULL) = $2)
               AND (NOT $3 OR lockout_reason IS NOT NULL)
             ORDER BY username COLLATE \"C\", id",
            &[&status, &f.trashed, &f.locked],
        )?
        .iter()
        .map(user_row)
        .collect()
    }

    fn trashed_before(&mut self, t: i64) -> Result<Vec<UserId>> {
        self.rows(
            "SELECT id FROM users WHERE trashed_at IS NOT NULL AND trashed_at <= $1",
            &[&t],
        )?
        .iter()
        .map(|r| Ok(UserId::from_string(r.try_get::<_, String>(0)?)))
        .collect()
    }

    fn devices(&mut self, user: &UserId) -> Result<Vec<Device>> {
        self.rows(
            "SELECT id, user_id, kind, name, created_at FROM devices WHERE user_id = $1
             ORDER BY created_at, id COLLATE \"C\"",
            &[&user.as_str()],
        )?
        .iter()
        .map(device_row)
        .collect()
    }

    fn all_devices(&mut self) -> Result<Vec<Device>> {
        self.rows(
            "SELECT id, user_id, kind, name, created_at FROM devices
             ORDER BY created_at, id COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(device_row)
        .collect()
    }

    fn device_count(&mut self, user: &UserId) -> Result<u64> {
        let n: i64 = self
            .rows(
                "SELECT count(*) FROM devices WHERE user_id = $1",
                &[&user.as_str()],
            )?
            .first()
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    fn insert_device(&mut self, d: &Device) -> Result<()> {
        self.exec(
            "INSERT INTO devices (id, user_id, kind, name, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &d.id.as_str(),
                &d.user_id.as_str(),
                &d.kind.as_str(),
                &d.name,
                &d.created_at,
            ],
        )?;
        Ok(())
    }

    fn delete_device(&mut self, user: &UserId, id: &DeviceId) -> Result<bool> {
        Ok(self.exec(
            "DELETE FROM devices WHERE user_id = $1 AND id = $2",
            &[&user.as_str(), &id.as_str()],
        )? > 0)
    }

    fn codes(&mut self, user: &UserId) -> Result<Vec<CodeRecord>> {
        self.rows(
            "SELECT id, user_id, digest, scheme, created_at, created_by, expires_at, uses_remaining, reuse_count
             FROM codes WHERE user_id = $1 ORDER BY created_at, id COLLATE \"C\"",
            &[&user.as_str()],
        )?
        .iter()
        .map(code_row)
        .collect()
    }

    fn all_codes(&mut self) -> Result<Vec<CodeRecord>> {
        self.rows(
            "SELECT id, user_id, digest, scheme, created_at, created_by, expires_at, uses_remaining, reuse_count
             FROM codes ORDER BY created_at, id COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(code_row)
        .collect()
    }

    fn code(&mut self, id: &CodeId) -> Result<Option<CodeRecord>> {
        self.opt(
            "SELECT id, user_id, digest, scheme, created_at, created_by, expires_at, uses_remaining, reuse_count
             FROM codes WHERE id = $1",
            &[&id.as_str()],
        )?
        .as_ref()
        .map(code_row)
        .transpose()
    }

    fn insert_code(&mut self, c: &CodeRecord) -> Result<()> {
        let scheme = i64::from(c.scheme);
        let uses = c.uses_remaining.map(i64::from);
        let reuse = i64::from(c.reuse_count);
        self.exec(
            "INSERT INTO codes (id, user_id, digest, scheme, created_at, created_by, expires_at, uses_remaining, reuse_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &c.id.as_str(),
                &c.user_id.as_str(),
                &&c.digest[..],
                &scheme,
                &c.created_at,
                &c.created_by,
                &c.expires_at,
                &uses,
                &reuse,
            ],
        )?;
        Ok(())
    }

    fn set_code_uses(&mut self, id: &CodeId, uses: u32) -> Result<()> {
        let uses = i64::from(uses);
        self.exec(
            "UPDATE codes SET uses_remaining = $2 WHERE id = $1",
            &[&id.as_str(), &uses],
        )?;
        Ok(())
    }

    fn delete_code(&mut self, id: &CodeId) -> Result<bool> {
        Ok(self.exec("DELETE FROM codes WHERE id = $1", &[&id.as_str()])? > 0)
    }

    fn delete_codes_of(&mut self, user: &UserId) -> Result<u64> {
        self.exec("DELETE FROM codes WHERE user_id = $1", &[&user.as_str()])
    }

    fn delete_expired_codes(&mut self, user: Option<&UserId>, now: i64) -> Result<u64> {
        match user {
            Some(u) => self.exec(
                "DELETE FROM codes WHERE user_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2",
                &[&u.as_str(), &now],
            ),
            None => self.exec(
                "DELETE FROM codes WHERE expires_at IS NOT NULL AND expires_at <= $1",
                &[&now],
            ),
        }
    }

    fn append_audit(&mut self, e: &AuditEvent) -> Result<()> {
        self.insert_audit(e, false)
    }

    fn import_audit(&mut self, events: &[AuditEvent]) -> Result<()> {
        for e in events {
            self.insert_audit(e, true)?;
        }
        // New events are numbered after the imported ones.
        self.batch(
            "SELECT setval(pg_get_serial_sequence('audit', 'id'), GREATEST((SELECT max(id) FROM audit), 1))",
        )?;
        Ok(())
    }

    fn audit(&mut self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let limit = f.limit.map(i64::from);
        self.rows(
            "SELECT * FROM (
                SELECT id, time, actor, action, user_id, username, code_id, outcome, reason,
                       src_address, src_station, src_nas, src_tty, detail
                FROM audit
                WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR action = $2)
                  AND ($3::text IS NULL OR outcome = $3) AND ($4::text IS NULL OR actor = $4)
                  AND ($5::bigint IS NULL OR time >= $5) AND ($6::bigint IS NULL OR time < $6)
                ORDER BY id DESC LIMIT $7
             ) AS recent ORDER BY id",
            &[
                &text(&f.user_id),
                &text(&f.action),
                &text(&f.outcome),
                &text(&f.actor),
                &f.since,
                &f.until,
                &limit,
            ],
        )?
        .iter()
        .map(audit_row)
        .collect()
    }

    fn insert_admin_key(&mut self, k: &AdminKey, sealed_secret: &[u8]) -> Result<()> {
        self.exec(
            "INSERT INTO admin_keys (ikey, name, role, may_create_codes, may_customise_codes,
                                     created_at, revoked_at, sealed_secret)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &k.ikey,
                &k.name,
                &k.role.as_str(),
                &k.may_create_codes,
                &k.may_customise_codes,
                &k.created_at,
                &k.revoked_at,
                &sealed_secret,
            ],
        )?;
        Ok(())
    }

    fn admin_key(&mut self, ikey: &str) -> Result<Option<(AdminKey, Vec<u8>)>> {
        self.opt(
            "SELECT ikey, name, role, may_create_codes, may_customise_codes, created_at,
                    revoked_at, sealed_secret
             FROM admin_keys WHERE ikey = $1",
            &[&ikey],
        )?
        .as_ref()
        .map(|r| Ok((admin_key_row(r)?, r.try_get(7)?)))
        .transpose()
    }

    fn admin_keys(&mut self) -> Result<Vec<AdminKey>> {
        self.rows(
            "SELECT ikey, name, role, may_create_codes, may_customise_codes, created_at, revoked_at
             FROM admin_keys ORDER BY created_at, ikey COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(admin_key_row)
        .collect()
    }

    fn revoke_admin_key(&mut self, ikey: &str, at: i64) -> Result<bool> {
        Ok(self.exec(
            "UPDATE admin_keys SET revoked_at = $2 WHERE ikey = $1 AND revoked_at IS NULL",
            &[&ikey, &at],
        )? > 0)
    }
}

fn admin_key_row(row: &Row) -> Result<AdminKey> {
    let role: String = row.try_get(2)?;
    Ok(AdminKey {
        ikey: row.try_get(0)?,
        name: row.try_get(1)?,
        role: role
            .parse()
            .map_err(|_| Error::Store(format!("corrupt store: role {role:?}")))?,
        may_create_codes: row.try_get(3)?,
        may_customise_codes: row.try_get(4)?,
        created_at: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart_and_passwords_hidden() {
        let t = parse_url("postgres://sk@db.example:5433/sparekey?sslmode=verify-full").unwrap();
        assert_eq!(t.tls, TlsMode::VerifyFull);
        assert_eq!(t.pg.get_ports(), [5433]);
        assert_eq!(t.pg.get_dbname(), Some("sparekey"));
        assert_eq!(
            parse_url("postgres://sk@h/db").unwrap().tls,
            TlsMode::Disable
        );
        let t =
            parse_url("postgres://sk@h/db?sslmode=require&sslrootcert=/etc/ca%20x.pem").unwrap();
        assert_eq!(t.tls, TlsMode::VerifyCa, "require with a root is verify-ca");
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca x.pem")));
        for bad in [
            "mysql://h/db",
            "postgres://sk@h/db?sslmode=prefer",
            "postgres://sk@h/db?sslmode=maybe",
            "postgres://h/db",
            "postgres://sk@h/db?sslcert=/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let Err(e) = parse_url("postgres://sk:hunter2@h/db?sslmode=prefer") else {
            panic!("prefer is refused")
        };
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            redact_url("postgres://sk:hunter2@h:5432/db?sslmode=require"),
            "postgres://sk:***@h:5432/db?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://sk@h/db?password=hunter2&x=1"),
            "postgresql://sk@h/db?password=***&x=1"
        );
    }
}
