//! The `[radius]` section of the shared config: where to listen, which clients may ask,
//! with which secrets, and how much work to take on at once.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use sparekey::Config;

/// Longest shared secret accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 256;
/// A secret shorter than this is accepted with a warning: BlastRADIUS-era guidance is 16
/// random characters or more.
pub const SHORT_SECRET_LEN: usize = 16;

/// What a user in bypass status gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BypassStatus {
    /// Access-Accept without a code (Duo's meaning of bypass).
    Allow,
    /// Access-Reject: the default here, since a NAS may use this server as its only check.
    #[default]
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    listen: Vec<String>,
    #[serde(default)]
    bypass_status: BypassStatus,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_max_batch")]
    max_batch: usize,
    #[serde(default = "default_commit_interval_us")]
    commit_interval_us: u64,
    #[serde(default)]
    writer_nice: i32,
    #[serde(default, rename = "client")]
    clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    address: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default = "yes")]
    require_message_authenticator: bool,
    #[serde(default = "default_rate_limit")]
    rate_limit: u32,
}

fn default_max_in_flight() -> usize {
    4096
}
fn default_max_batch() -> usize {
    256
}
fn default_commit_interval_us() -> u64 {
    1000
}
/// Longest `commit_interval_us` accepted: a tenth of a second.
const MAX_COMMIT_INTERVAL_US: u64 = 100_000;
fn yes() -> bool {
    true
}
fn default_rate_limit() -> u32 {
    2000
}

/// A shared secret: never printed.
#[derive(Clone)]
pub struct ClientSecret(Zeroizing<Vec<u8>>);

impl ClientSecret {
    /// Checks a secret's length.
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.is_empty() {
            return Err("secret is empty".into());
        }
        if bytes.len() > MAX_SECRET_LEN {
            return Err(format!("secret is longer than {MAX_SECRET_LEN} bytes"));
        }
        Ok(ClientSecret(Zeroizing::new(bytes)))
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        Ok(IpNet {
            addr: canonical(addr),
            prefix,
        })
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }

    /// The prefix length (more is more specific).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// IPv4 clients reaching a dual-stack socket appear as `::ffff:a.b.c.d`; match them as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// One NAS allowed to ask.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// A name for logs and the audit actor (`radius:<name>`).
    pub name: String,
    /// Addresses it may send from.
    pub network: IpNet,
    /// The shared secret.
    pub secret: ClientSecret,
    /// Drop requests without a valid Message-Authenticator (default true).
    pub require_message_authenticator: bool,
    /// Requests per second accepted from it (bursts up to twice that); 0 is unlimited.
    pub rate_limit: u32,
}

/// The checked `[radius]` section.
#[derive(Clone, Debug)]
pub struct RadiusConfig {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// What a user in bypass status gets.
    pub bypass_status: BypassStatus,
    /// Requests being verified at once, at most; more are dropped for the NAS to retransmit.
    pub max_in_flight: usize,
    /// Verifications committed together, at most.
    pub max_batch: usize,
    /// Under load, the least time from one batch's start to the next's (see
    /// [`crate::writer`]); zero starts each batch as soon as the last is done.
    pub commit_interval: std::time::Duration,
    /// The nice value of the store writer and its sync thread, from -20 (first) to 19;
    /// 0 leaves them at the process's (see [`crate::writer::Batching::nice`]).
    pub writer_nice: i32,
    /// The clients.
    pub clients: Vec<ClientConfig>,
    /// Things worth a warning that are not errors (short secrets).
    pub warnings: Vec<String>,
}

impl RadiusConfig {
    /// Reads and checks `[radius]` from the shared config. Errors name the file and key.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let file = config.file.display().to_string();
        let err = |m: String| format!("config {file}: {m}");
        let raw: RawSection = config
            .section("radius")
            .map_err(|e| e.to_string())?
            .ok_or_else(|| err("no [radius] section".into()))?;
        if raw.listen.is_empty() {
            return Err(err("radius.listen: give at least one address".into()));
        }
        let listen = raw
            .listen
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| err(format!("radius.listen: {a:?} is not IP:port")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if raw.clients.is_empty() {
            return Err(err("no [[radius.client]]: nothing could ask".into()));
        }
        if !(1..=1_000_000).contains(&raw.max_in_flight) {
            return Err(err("radius.max_in_flight: must be 1 to 1000000".into()));
        }
        if !(1..=10_000).contains(&raw.max_batch) {
            return Err(err("radius.max_batch: must be 1 to 10000".into()));
        }
        if raw.commit_interval_us > MAX_COMMIT_INTERVAL_US {
            return Err(err(format!(
                "radius.commit_interval_us: must be 0 to {MAX_COMMIT_INTERVAL_US}"
            )));
        }
        if !(-20..=19).contains(&raw.writer_nice) {
            return Err(err("radius.writer_nice: must be -20 to 19".into()));
        }
        let base = config.file.parent().unwrap_or(Path::new("."));
        let mut clients = Vec::new();
        let mut warnings = Vec::new();
        for (i, c) in raw.clients.into_iter().enumerate() {
            let at = |m: String| err(format!("radius.client[{i}]: {m}"));
            if c.name.is_empty()
                || c.name.len() > 64
                || !c.name.chars().all(|ch| ch.is_ascii_graphic())
            {
                return Err(at(
                    "name: 1 to 64 printable characters without spaces".into()
                ));
            }
            if clients.iter().any(|o: &ClientConfig| o.name == c.name) {
                return Err(at(format!("name {:?} is used twice", c.name)));
            }
            let network = IpNet::parse(&c.address).map_err(|e| at(format!("address: {e}")))?;
            let secret = match (c.secret, c.secret_file) {
                (Some(s), None) => s.into_bytes(),
                (None, Some(f)) => {
                    read_secret_file(&if f.is_absolute() { f } else { base.join(f) }).map_err(at)?
                }
                _ => return Err(at("give exactly one of secret and secret_file".into())),
            };
            let secret = ClientSecret::new(secret).map_err(at)?;
            if secret.expose().len() < SHORT_SECRET_LEN {
                warnings.push(format!(
                    "client {}: the shared secret is shorter than {SHORT_SECRET_LEN} characters; use a long random one",
                    c.name
                ));
            }
            clients.push(ClientConfig {
                name: c.name,
                network,
                secret,
                require_message_authenticator: c.require_message_authenticator,
                rate_limit: c.rate_limit,
            });
        }
        Ok(RadiusConfig {
            listen,
            bypass_status: raw.bypass_status,
            max_in_flight: raw.max_in_flight,
            max_batch: raw.max_batch,
            commit_interval: std::time::Duration::from_micros(raw.commit_interval_us),
            writer_nice: raw.writer_nice,
            clients,
            warnings,
        })
    }
}

/// Reads the config file after checking that nobody but its owner can change it: the file
/// and every directory above it must be unwritable by group and others (a sticky directory
/// such as `/tmp` excepted, since there only a file's owner can replace it). The config
/// names the key, the store and the client secrets, so whoever could rewrite it could let
/// themselves in. The text is read from the descriptor that was checked.
pub fn check_config_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let at = |m: String| format!("config {}: {m}", path.display());
    let real = std::fs::canonicalize(path).map_err(|e| at(e.to_string()))?;
    for dir in real.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map_err(|e| at(format!("directory {}: {e}", dir.display())))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(at(format!(
                "directory {} (mode {:04o}) lets group or others replace the file; chmod go-w it",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    let mut file = std::fs::File::open(&real).map_err(|e| at(e.to_string()))?;
    let meta = file.metadata().map_err(|e| at(e.to_string()))?;
    if !meta.is_file() {
        return Err(at("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(at(format!(
            "mode {mode:04o} lets group or others write it; chmod go-w it"
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|_| at("not valid UTF-8".into()))?;
    Ok(text)
}

/// Reads a secret file: refuses one that group or others may read; a trailing newline is
/// not part of the secret.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "secret_file {}: mode {mode:04o} lets group or others at it; chmod 600 it",
            path.display()
        ));
    }
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("secret_file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(radius: &str) -> Result<RadiusConfig, String> {
        let text = format!("[store]\npath = \"db\"\nkey_file = \"k\"\n{radius}");
        let c =
            Config::parse(&text, Path::new("/etc/sk/sparekey.toml")).map_err(|e| e.to_string())?;
        RadiusConfig::from_config(&c)
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(
            n.contains("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4-mapped sources match IPv4 networks"
        );
        assert!(!n.contains("::1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert_eq!(one.prefix(), 32);
        assert!(
            IpNet::parse("2001:db8::/33")
                .unwrap()
                .contains("2001:db8:7fff::1".parse().unwrap())
        );
        assert!(
            !IpNet::parse("2001:db8::/33")
                .unwrap()
                .contains("2001:db8:8000::1".parse().unwrap())
        );
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "host", "10.0.0.0/", "::/129"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_section() {
        let c = parse(
            "[radius]\nlisten = [\"127.0.0.1:1812\", \"[::1]:1812\"]\nbypass_status = \"allow\"\n\
             [[radius.client]]\nname = \"vpn\"\naddress = \"10.0.0.0/8\"\nsecret = \"0123456789abcdef\"\n\
             [[radius.client]]\nname = \"lab\"\naddress = \"::1\"\nsecret = \"short\"\nrequire_message_authenticator = false\nrate_limit = 10\n",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.bypass_status, BypassStatus::Allow);
        assert_eq!(c.clients.len(), 2);
        assert_eq!(c.commit_interval, std::time::Duration::from_millis(1));
        assert_eq!(
            c.writer_nice, 0,
            "the writer keeps the process's priority by default"
        );
        assert!(c.clients[0].require_message_authenticator);
        assert_eq!(c.clients[0].rate_limit, 2000);
        assert!(!c.clients[1].require_message_authenticator);
        assert_eq!(c.warnings.len(), 1, "a short secret is worth a warning");
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "secrets never print"
        );
    }

    #[test]
    fn the_writer_nice_is_read() {
        let c = parse(
            "[radius]\nlisten = [\"127.0.0.1:1812\"]\nwriter_nice = -5\n\
             [[radius.client]]\nname = \"vpn\"\naddress = \"10.0.0.1\"\nsecret = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(c.writer_nice, -5);
    }

    #[test]
    fn bad_sections_name_the_key() {
        let client = "[[radius.client]]\nname = \"vpn\"\naddress = \"10.0.0.1\"\nsecret = \"s3cr3t-s3cr3t-s3cr3t\"\n";
        for (section, key) in [
            ("", "no [radius]"),
            ("[radius]\nlisten = []\n", "radius.listen"),
            (
                &format!("[radius]\nlisten = [\"1812\"]\n{client}") as &str,
                "radius.listen",
            ),
            ("[radius]\nlisten = [\"127.0.0.1:1812\"]\n", "radius.client"),
            (
                &format!("[radius]\nlisten = [\"127.0.0.1:1812\"]\nlisen = 1\n{client}"),
                "lisen",
            ),
            (
                &format!("[radius]\nlisten = [\"127.0.0.1:1812\"]\n{client}{client}"),
                "used twice",
            ),
            (
                "[radius]\nlisten = [\"127.0.0.1:1812\"]\n[[radius.client]]\nname = \"a\"\naddress = \"x\"\nsecret = \"s\"\n",
                "address",
            ),
            (
                "[radius]\nlisten = [\"127.0.0.1:1812\"]\n[[radius.client]]\nname = \"a\"\naddress = \"::1\"\n",
                "exactly one",
            ),
            (
                "[radius]\nlisten = [\"127.0.0.1:1812\"]\n[[radius.client]]\nname = \"a\"\naddress = \"::1\"\nsecret = \"\"\n",
                "empty",
            ),
            (
                "[radius]\nlisten = [\"127.0.0.1:1812\"]\nbypass_status = \"maybe\"\n",
                "bypass_status",
            ),
            (
                &format!(
                    "[radius]\nlisten = [\"127.0.0.1:1812\"]\ncommit_interval_us = 100001\n{client}"
                ),
                "radius.commit_interval_us: must be 0 to 100000",
            ),
            (
                &format!(
                    "[radius]\nlisten = [\"127.0.0.1:1812\"]\ncommit_interval_us = -1\n{client}"
                ),
                "commit_interval_us",
            ),
            (
                &format!("[radius]\nlisten = [\"127.0.0.1:1812\"]\nwriter_nice = -21\n{client}"),
                "radius.writer_nice: must be -20 to 19",
            ),
            (
                &format!("[radius]\nlisten = [\"127.0.0.1:1812\"]\nwriter_nice = 20\n{client}"),
                "radius.writer_nice: must be -20 to 19",
            ),
        ] {
            let e = parse(section).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn a_config_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sparekey.toml");
        std::fs::write(&f, "[store]\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check_config_file(&f).unwrap(), "[store]\n");
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check_config_file(&f).unwrap_err();
            assert!(
                e.contains(&format!("mode {mode:04o} lets group or others write it")),
                "{e}"
            );
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_config_file(&f).unwrap_err();
        assert!(
            e.contains("(mode 0777) lets group or others replace the file"),
            "{e}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_config_file(&f).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            check_config_file(&dir.path().join("none"))
                .unwrap_err()
                .contains("none")
        );
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-a-file-0123456789\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&f).unwrap(), b"from-a-file-0123456789");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_secret_file(&f).unwrap_err().contains("0644"));
        assert!(read_secret_file(&dir.path().join("none")).is_err());
    }
}
