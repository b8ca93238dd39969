//! `sparekey-radiusd --config FILE`: serves RADIUS until SIGTERM or SIGINT, then finishes
//! and commits what is in flight and exits 0. Logs go to stderr (for journald); auth
//! outcomes also go to syslog as LOG_AUTHPRIV when /dev/log is there.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sparekey::Config;
use sparekey_radiusd::config::{RadiusConfig, check_config_file};
use sparekey_radiusd::server::{self, AuthLog, Counters};
use sparekey_radiusd::store::{self, StoreHandle};

/// mimalloc, not the C library's allocator: each request allocates on a network thread
/// and is freed on the writer, and the reverse for its answer. With glibc's arenas that
/// traffic cost about a tenth of the CPU of both stages (BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sparekey-radiusd",
    version,
    about = "RADIUS server for sparekey bypass codes"
)]
struct Args {
    /// Config file [default: $SPAREKEY_CONFIG, then /etc/sparekey/sparekey.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config, the key and the store, then exit
    #[arg(long)]
    check: bool,
    /// error, warn, info or debug
    #[arg(long, default_value = "info", env = "SPAREKEY_LOG")]
    log_level: log::LevelFilter,
}

/// Writes log records to stderr, one line each, for journald.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Auth outcomes to syslog, facility authpriv.
struct Syslog(Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>);

impl AuthLog for Syslog {
    fn record(&self, line: &str) {
        if let Ok(mut l) = self.0.lock() {
            // A syslog that went away must not stop authentication.
            let _ = l.info(line);
        }
    }
}

fn syslog() -> Option<Box<dyn AuthLog>> {
    let f = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_AUTHPRIV,
        hostname: None,
        process: "sparekey-radiusd".into(),
        pid: std::process::id(),
    };
    syslog::unix(f)
        .ok()
        .map(|l| Box::new(Syslog(Mutex::new(l))) as Box<dyn AuthLog>)
}

fn main() -> ExitCode {
    let args = Args::parse();
    log::set_max_level(args.log_level);
    let _ = log::set_logger(&Stderr);
    if let Err(e) = sparekey_radiusd::without_huge_pages() {
        log::warn!("cannot turn transparent huge pages off: {e}; latency may suffer");
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(
                "{}",
                e.chain()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            ExitCode::from(2)
        }
    }
}

/// Reads the config from the very file whose permissions were checked, so that it cannot
/// be swapped in between.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let text = check_config_file(path).map_err(anyhow::Error::msg)?;
    Ok(Config::parse(&text, path)?)
}

fn run(args: Args) -> anyhow::Result<()> {
    let path = Config::locate(args.config.as_deref());
    let config = load_config(&path)?;
    let radius = RadiusConfig::from_config(&config).map_err(anyhow::Error::msg)?;
    for w in &radius.warnings {
        log::warn!("{w}");
    }
    let store = StoreHandle::open(&config)?;
    if args.check {
        println!("config {}: ok", path.display());
        return Ok(());
    }
    store::spawn_checkpointer(config.clone(), store.health())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sockets = Vec::new();
        for addr in &radius.listen {
            // server::bind enlarges the receive buffer (a burst of requests waits there
            // rather than being dropped) and keeps an IPv6 address to IPv6 only.
            let s = server::bind(*addr)
                .and_then(tokio::net::UdpSocket::from_std)
                .with_context(|| format!("binding {addr}"))?;
            log::info!("listening on {}", s.local_addr()?);
            sockets.push(s);
        }
        let counters = Arc::new(Counters::default());
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    log::error!("cannot watch for signals; stop with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        };
        server::run(
            sockets,
            Box::new(store),
            &radius,
            syslog(),
            counters,
            shutdown,
        )
        .await?;
        Ok(())
    })
}
