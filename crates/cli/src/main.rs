//! `sparekey`: the admin CLI. It creates stores, manages users, devices and bypass codes,
//! verifies a code, and reads the audit log.
//!
//! Exit codes: 0 success (or an accepted code), 1 rejected or not found, 2 usage, config
//! or store error. `--json` gives machine output on stdout; its shapes are in README.md.

#![forbid(unsafe_code)]

mod admin_key;
mod duration;
mod output;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sparekey::config::Location;
use sparekey::store::{CodeRequest, NewUser, SqliteBackend, UserFilter, UserUpdate};
use sparekey::{
    AuditFilter, Config, Context, Decision, DeviceKind, DigestKey, Error, Passcode, Status, Store,
};

use crate::duration::{parse_duration, parse_time};
use crate::output::Out;

#[derive(Parser, Debug)]
#[command(
    name = "sparekey",
    version,
    about = "Admin CLI for sparekey bypass codes",
    max_term_width = 100
)]
struct Cli {
    /// Config file [default: $SPAREKEY_CONFIG, then /etc/sparekey/sparekey.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a config, a key and an empty store in DIR
    Init {
        /// Directory for sparekey.toml, sparekey.key and sparekey.db (created if missing)
        #[arg(long)]
        dir: PathBuf,
    },
    /// Manage users
    #[command(subcommand)]
    User(UserCmd),
    /// Manage enrolled devices (a user without one cannot use bypass codes)
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Integration keys for the Duo-compatible Admin API (sparekey-admind)
    #[command(subcommand)]
    AdminKey(admin_key::AdminKeyCmd),
    /// Issue, list and revoke bypass codes
    #[command(subcommand)]
    Code(CodeCmd),
    /// Verify a code read from stdin: exit 0 accepted, 1 rejected, 2 error
    Verify {
        /// Username or alias
        name: String,
        /// Exit 0 for a user in bypass status (Duo's meaning); by default it is exit 1
        #[arg(long)]
        allow_bypass: bool,
    },
    /// List audit events
    Audit(AuditArgs),
    /// Create or update users (and add devices) from a CSV file; all rows or none
    Import {
        /// CSV file (`-` for stdin)
        file: PathBuf,
        /// Show what would change and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Write users, aliases, status and devices as CSV or JSON
    Export {
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Write to FILE (mode 0600) instead of stdout
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Drop expired codes and users past the trash retention
    Purge,
    /// Create the store the config names, or copy a whole store to another backend
    #[command(subcommand)]
    Store(StoreCmd),
    /// Check the config, the key file and the store
    CheckConfig {
        /// Also run the store's full integrity check (slow on large stores)
        #[arg(long)]
        integrity: bool,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Create a new key file and an empty store where the config says (for PostgreSQL:
    /// the tables, in an existing database); refuses to overwrite either
    Create,
    /// Copy users, devices, code digests and the audit log from this store (--config)
    /// into the new or empty store OTHER_CONFIG names (SQLite or PostgreSQL), which must
    /// use the same key file contents and username normalisation
    Copy {
        /// The target's config file
        #[arg(long, value_name = "OTHER_CONFIG")]
        to: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user
    Add {
        name: String,
        /// Another login name (up to 8)
        #[arg(long = "alias", value_name = "A")]
        aliases: Vec<String>,
        #[arg(long)]
        realname: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
        #[arg(long)]
        notes: Option<String>,
    },
    /// List users
    List {
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
        /// Only users in the trash
        #[arg(long, conflicts_with = "all")]
        trashed: bool,
        /// Only locked-out users
        #[arg(long)]
        locked: bool,
        /// Users in the trash too
        #[arg(long)]
        all: bool,
    },
    /// Show a user with devices and codes (never code values)
    Show { name: String },
    /// Change a user's names, details or status (an empty value clears a field)
    Update {
        name: String,
        #[arg(long)]
        username: Option<String>,
        /// Replace all aliases with these
        #[arg(long = "alias", value_name = "A")]
        aliases: Vec<String>,
        /// Remove every alias
        #[arg(long, conflicts_with = "aliases")]
        clear_aliases: bool,
        #[arg(long = "add-alias", value_name = "A")]
        add_aliases: Vec<String>,
        #[arg(long = "remove-alias", value_name = "A")]
        remove_aliases: Vec<String>,
        #[arg(long)]
        realname: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        notes: Option<String>,
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
    },
    /// Set a user's status: active, bypass or disabled
    Status {
        name: String,
        #[arg(value_parser = parse_status)]
        status: Status,
    },
    /// Move a user to the trash (or remove them now with --permanent)
    Delete {
        name: String,
        /// Remove the user, their devices and codes at once
        #[arg(long)]
        permanent: bool,
    },
    /// Bring a user back from the trash with their devices and codes
    Restore { name: String },
    /// Clear a lockout and the failure counter
    Unlock { name: String },
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Enrol a device for a user
    Add {
        name: String,
        #[arg(long, value_parser = parse_kind)]
        kind: DeviceKind,
        /// A label ("work phone")
        #[arg(long = "name", value_name = "LABEL")]
        label: Option<String>,
    },
    /// List a user's devices
    List { name: String },
    /// Remove a device
    Remove { name: String, device_id: String },
}

#[derive(Subcommand, Debug)]
enum CodeCmd {
    /// Issue bypass codes (one per line on stdout); replaces the user's codes unless
    /// --preserve-existing
    Generate {
        name: String,
        /// How many random 9-digit codes (1-10)
        #[arg(long, default_value_t = 1, conflicts_with = "codes")]
        count: usize,
        /// A code of your choosing, 6-20 digits (repeatable, at most 10)
        #[arg(long = "code", value_name = "C")]
        codes: Vec<String>,
        /// Uses per code; 0 is unlimited
        #[arg(long, default_value_t = 1)]
        reuse_count: u32,
        /// Seconds each code stays valid; 0 never expires
        #[arg(long, default_value_t = 3600)]
        valid_secs: u64,
        /// Keep the user's existing codes (all or nothing against the 100 cap)
        #[arg(long)]
        preserve_existing: bool,
    },
    /// Issue an 8-digit temporary OTP, valid at most 72h; keeps existing codes
    Temp {
        name: String,
        /// How long it stays valid (e.g. 30m, 4h, 3d; at most 72h)
        #[arg(long, default_value = "72h", value_parser = parse_duration)]
        valid_for: u64,
        /// Any number of uses within its validity instead of one
        #[arg(long)]
        reusable: bool,
    },
    /// List codes' metadata (never their values), of one user or all
    List { name: Option<String> },
    /// Revoke a code by id
    Delete { code_id: String },
}

#[derive(Args, Debug)]
struct AuditArgs {
    /// Only this user (username, alias or id)
    #[arg(long)]
    user: Option<String>,
    /// Only this action (auth, user.add, code.generate, ...)
    #[arg(long)]
    action: Option<String>,
    /// Only this outcome (accept, reject, bypass, ok)
    #[arg(long)]
    outcome: Option<String>,
    /// Only this actor (cli:root, pam:sshd, radius:vpn, ...)
    #[arg(long)]
    actor: Option<String>,
    /// At or after (RFC 3339, Unix seconds, or a duration ago such as 24h)
    #[arg(long)]
    since: Option<String>,
    /// Before (same forms as --since)
    #[arg(long)]
    until: Option<String>,
    /// Only the newest N
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long, value_enum, default_value = "text")]
    format: AuditFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ExportFormat {
    Csv,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum AuditFormat {
    Text,
    Json,
    Csv,
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_kind(s: &str) -> Result<DeviceKind, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// How a command ended, beyond success.
#[derive(Debug)]
enum Failure {
    /// Rejected or not found: exit 1.
    Rejected,
    /// Usage, config or store error: exit 2.
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    // Everything this program creates (store, key, WAL, exports) is for its owner only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let out = Out::new(cli.json);
    match run(cli, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected) => ExitCode::from(1),
        Err(Failure::Error(e)) => {
            let not_found = e.downcast_ref::<Error>().is_some_and(Error::is_not_found);
            eprintln!("sparekey: {}", error_text(&e));
            if let Some(Error::Import { file, rows }) = e.downcast_ref::<Error>() {
                for (line, why) in rows {
                    eprintln!("{file}:{line}: {why}");
                }
            }
            ExitCode::from(if not_found { 1 } else { 2 })
        }
    }
}

/// The error with its causes, on one line.
fn error_text(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The audit actor for this invocation: `cli:<user>`, noting the sudo caller if any.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| rustix::process::getuid().as_raw().to_string());
    match std::env::var("SUDO_USER") {
        Ok(by) if by != user => format!("cli:{user}(sudo:{by})"),
        _ => format!("cli:{user}"),
    }
}

fn load_config(cli_config: Option<&Path>) -> anyhow::Result<Config> {
    let path = Config::locate(cli_config);
    Ok(Config::load(&path)?)
}

fn open(cli_config: Option<&Path>) -> anyhow::Result<Store> {
    let config = load_config(cli_config)?;
    Ok(Store::open(&config)?)
}

fn run(cli: Cli, out: &Out) -> Outcome {
    let ctx = Context::new(actor());
    let config = cli.config.as_deref();
    match cli.command {
        Command::Init { dir } => init(&dir, out),
        Command::User(cmd) => user(open(config)?, cmd, &ctx, out),
        Command::Device(cmd) => device(open(config)?, cmd, &ctx, out),
        Command::Code(cmd) => code(open(config)?, cmd, &ctx, out),
        Command::AdminKey(cmd) => admin_key::run(open(config)?, cmd, &ctx, out),
        Command::Verify { name, allow_bypass } => {
            verify(open(config)?, &name, allow_bypass, &ctx, out)
        }
        Command::Audit(args) => audit(open(config)?, args, out),
        Command::Import { file, dry_run } => import(open(config)?, &file, dry_run, &ctx, out),
        Command::Export { format, output } => export(open(config)?, format, output.as_deref(), out),
        Command::Purge => {
            let report = open(config)?.purge(&ctx)?;
            out.purge(&report);
            Ok(())
        }
        Command::Store(cmd) => store_cmd(config, cmd, &ctx, out),
        Command::CheckConfig { integrity } => check_config(config, integrity, out),
    }
}

fn store_cmd(cli_config: Option<&Path>, cmd: StoreCmd, ctx: &Context, out: &Out) -> Outcome {
    let config = load_config(cli_config)?;
    match cmd {
        StoreCmd::Create => {
            Store::create(&config)?;
            out.done(&format!(
                "created {} and the store {}",
                config.store.key_file.display(),
                config.location()
            ));
        }
        StoreCmd::Copy { to } => {
            let target_config = Config::load(&to)?;
            let mut source = Store::open(&config)?;
            let mut target = Store::open_copy_target(&target_config)?;
            let report = source.copy_to(&mut target, ctx)?;
            out.copied(&report, &target_config);
        }
    }
    Ok(())
}

fn init(dir: &Path, out: &Out) -> Outcome {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    let config_path = dir.join("sparekey.toml");
    let config = Config::parse(&Config::init_text(&dir), &config_path)?;
    let files = [&config_path, &config.store.key_file, &config.store.path];
    for f in files {
        if f.exists() {
            return Err(anyhow::anyhow!(
                "{} already exists; refusing to overwrite it",
                f.display()
            )
            .into());
        }
    }
    let created = (|| -> anyhow::Result<()> {
        Store::create(&config)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&config_path)
            .with_context(|| format!("{}", config_path.display()))?;
        f.write_all(Config::init_text(&dir).as_bytes())?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = created {
        // Leave nothing half-made behind: a key without its store is only confusing.
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        for suffix in ["-wal", "-shm"] {
            let mut p = config.store.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        return Err(e.into());
    }
    out.init(&config_path, &config);
    Ok(())
}

fn user(mut store: Store, cmd: UserCmd, ctx: &Context, out: &Out) -> Outcome {
    match cmd {
        UserCmd::Add {
            name,
            aliases,
            realname,
            email,
            status,
            notes,
        } => {
            let user = store.add_user(
                NewUser {
                    username: name,
                    aliases,
                    realname,
                    email,
                    notes,
                    status,
                },
                ctx,
            )?;
            out.user_changed("added", &user);
        }
        UserCmd::List {
            status,
            trashed,
            locked,
            all,
        } => {
            let trashed = if all { None } else { Some(trashed) };
            let users = store.list_users(&UserFilter {
                status,
                trashed,
                locked,
            })?;
            out.users(&users);
        }
        UserCmd::Show { name } => {
            let user = store.find_user(&name)?;
            let devices = store.list_devices(user.id.as_str())?;
            let codes = store.list_codes(Some(user.id.as_str()))?;
            out.user_detail(&user, &devices, &codes);
        }
        UserCmd::Update {
            name,
            username,
            aliases,
            clear_aliases,
            add_aliases,
            remove_aliases,
            realname,
            email,
            notes,
            status,
        } => {
            let aliases = if clear_aliases {
                Some(Vec::new())
            } else {
                (!aliases.is_empty()).then_some(aliases)
            };
            let up = UserUpdate {
                username,
                aliases,
                add_aliases,
                remove_aliases,
                realname,
                email,
                notes,
                status,
            };
            let user = store.update_user(&name, up, ctx)?;
            out.user_changed("updated", &user);
        }
        UserCmd::Status { name, status } => {
            let user = store.update_user(
                &name,
                UserUpdate {
                    status: Some(status),
                    ..UserUpdate::default()
                },
                ctx,
            )?;
            out.user_changed("updated", &user);
        }
        UserCmd::Delete { name, permanent } => {
            if permanent {
                let user = store.purge_user(&name, ctx)?;
                out.user_changed("removed", &user);
            } else {
                let user = store.trash_user(&name, ctx)?;
                out.user_changed("moved to the trash", &user);
            }
        }
        UserCmd::Restore { name } => {
            let user = store.restore_user(&name, ctx)?;
            out.user_changed("restored", &user);
        }
        UserCmd::Unlock { name } => {
            let user = store.unlock_user(&name, ctx)?;
            out.user_changed("unlocked", &user);
        }
    }
    Ok(())
}

fn device(mut store: Store, cmd: DeviceCmd, ctx: &Context, out: &Out) -> Outcome {
    match cmd {
        DeviceCmd::Add { name, kind, label } => {
            let d = store.add_device(&name, kind, label, ctx)?;
            out.device_added(&d);
        }
        DeviceCmd::List { name } => out.devices(&store.list_devices(&name)?),
        DeviceCmd::Remove { name, device_id } => {
            store.remove_device(&name, &device_id, ctx)?;
            out.done(&format!("removed device {device_id}"));
        }
    }
    Ok(())
}

fn code(mut store: Store, cmd: CodeCmd, ctx: &Context, out: &Out) -> Outcome {
    match cmd {
        CodeCmd::Generate {
            name,
            count,
            codes,
            reuse_count,
            valid_secs,
            preserve_existing,
        } => {
            let codes = codes
                .iter()
                .enumerate()
                .map(|(i, c)| Passcode::parse(c).with_context(|| format!("--code #{}", i + 1)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let req = CodeRequest {
                count,
                codes,
                reuse_count,
                valid_secs,
                preserve_existing,
                ..CodeRequest::default()
            };
            let issued = store.generate_codes(&name, req, ctx)?;
            if !issued.enrolled {
                eprintln!(
                    "sparekey: warning: {name} has no enrolled device; the codes will not work until one is added"
                );
            }
            out.issued(&issued.codes, issued.replaced, issued.enrolled);
        }
        CodeCmd::Temp {
            name,
            valid_for,
            reusable,
        } => {
            let issued = store.temp_code(&name, valid_for, reusable, ctx)?;
            out.issued(std::slice::from_ref(&issued), 0, true);
        }
        CodeCmd::List { name } => out.codes(&store.list_codes(name.as_deref())?),
        CodeCmd::Delete { code_id } => {
            let info = store.delete_code(&code_id, ctx)?;
            out.done(&format!("deleted code {}", info.id));
        }
    }
    Ok(())
}

/// The most of stdin `verify` reads: a code is at most 20 digits, so anything near this is
/// not one (and is still counted as a failed attempt).
const MAX_STDIN: u64 = 4096;

fn verify(mut store: Store, name: &str, allow_bypass: bool, ctx: &Context, out: &Out) -> Outcome {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN)
        .read_to_end(&mut input)
        .context("reading the code from stdin")?;
    let code = String::from_utf8_lossy(&input);
    let verdict = store.verify(name, &code, &ctx.clone().with_bypass(allow_bypass))?;
    out.verdict(&verdict);
    match verdict.decision {
        Decision::Accept | Decision::Bypass => Ok(()),
        Decision::Reject(_) => Err(Failure::Rejected),
    }
}

fn audit(mut store: Store, a: AuditArgs, out: &Out) -> Outcome {
    let now = sparekey::Clock::now(&sparekey::SystemClock);
    let time = |s: Option<String>, flag| -> anyhow::Result<Option<i64>> {
        s.map(|s| parse_time(&s, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    let user_id = match a.user {
        // A purged user's events are still found by the id they had.
        Some(u) => Some(match store.find_user(&u) {
            Ok(user) => user.id.to_string(),
            Err(e) if e.is_not_found() && sparekey::UserId::looks_like(&u) => u,
            Err(e) => return Err(e.into()),
        }),
        None => None,
    };
    let filter = AuditFilter {
        user_id,
        action: a.action,
        outcome: a.outcome,
        actor: a.actor,
        since: time(a.since, "since")?,
        until: time(a.until, "until")?,
        limit: a.limit,
    };
    let events = store.audit(&filter)?;
    let format = if out.json {
        AuditFormat::Json
    } else {
        a.format
    };
    out.audit(&events, format)?;
    Ok(())
}

fn import(mut store: Store, file: &Path, dry_run: bool, ctx: &Context, out: &Out) -> Outcome {
    let name = file.display().to_string();
    let rows = if file == Path::new("-") {
        sparekey::transfer::parse_csv(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).with_context(|| name.clone())?;
        sparekey::transfer::parse_csv(std::io::BufReader::new(f))
    };
    let rows = rows.map_err(|rows| Error::Import {
        file: name.clone(),
        rows,
    })?;
    let report = store.import(&name, &rows, dry_run, ctx)?;
    out.import(&report);
    Ok(())
}

fn export(mut store: Store, format: ExportFormat, output: Option<&Path>, out: &Out) -> Outcome {
    let users = store.export()?;
    let format = if out.json { ExportFormat::Json } else { format };
    let mut sink: Box<dyn Write> = match output {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .with_context(|| p.display().to_string())?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        ExportFormat::Csv => sparekey::transfer::write_csv(&users, &mut sink)?,
        ExportFormat::Json => {
            serde_json::to_writer_pretty(&mut sink, &users)?;
            sink.write_all(b"\n")?;
        }
    }
    sink.flush()?;
    Ok(())
}

fn check_config(path: Option<&Path>, integrity: bool, out: &Out) -> Outcome {
    let config = load_config(path)?;
    let mut warnings = Vec::new();
    if let Ok(meta) = std::fs::metadata(&config.file) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            warnings.push(format!(
                "{} is writable by group or others (mode {mode:04o}); pam_sparekey will refuse it",
                config.file.display()
            ));
        }
    }
    let key = DigestKey::load(&config.store.key_file)?;
    match config.location() {
        Location::Sqlite(_) => {
            let mut backend = SqliteBackend::open(&config.store)?;
            if integrity {
                backend.integrity_check()?;
            }
            Store::with_backend(
                Box::new(backend),
                key,
                config.policy.clone(),
                std::sync::Arc::new(sparekey::SystemClock),
            )?
            .bind_key(&config.store.key_file)?;
        }
        // PostgreSQL checks its own pages; opening proves the URL, password and schema.
        Location::Postgres(_) => drop(Store::open(&config)?),
    }
    for w in &warnings {
        eprintln!("sparekey: warning: {w}");
    }
    out.check_config(&config, &warnings);
    Ok(())
}
