//! `sparekey-admind --config FILE`: serves the Duo-compatible Admin API configured in
//! `[admin_api]` until SIGTERM or SIGINT. Logs go to stderr (for journald); every call is
//! also in the store's audit log, under the integration key's name.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sparekey::{Config, Store};
use sparekey_admind::api::Api;
use sparekey_admind::config::AdminApiConfig;
use sparekey_admind::server;

#[derive(Parser, Debug)]
#[command(
    name = "sparekey-admind",
    version,
    about = "Duo-compatible Admin API server for sparekey"
)]
struct Args {
    /// Config file [default: $SPAREKEY_CONFIG, then /etc/sparekey/sparekey.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config, the TLS files, the key and the store, then exit
    #[arg(long)]
    check: bool,
    /// error, warn, info or debug
    #[arg(long, default_value = "info", env = "SPAREKEY_LOG")]
    log_level: log::LevelFilter,
}

/// Writes log records to stderr, one line each.
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

static LOGGER: Stderr = Stderr;

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparekey-admind: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let file = Config::locate(args.config.as_deref());
    let config = Config::load(&file)?;
    let api_config: AdminApiConfig = config
        .section("admin_api")?
        .with_context(|| format!("{}: no [admin_api] section", file.display()))?;
    api_config
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let tls = match (&api_config.tls_cert, &api_config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let store = Store::open(&config)?;
    if args.check {
        println!("{}: ok", file.display());
        return Ok(());
    }
    let api = Arc::new(Mutex::new(Api::new(store, api_config.hostname.clone())));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(api_config.listen)
            .await
            .with_context(|| format!("listening on {}", api_config.listen))?;
        log::info!(
            "listening on {} ({})",
            listener.local_addr()?,
            if tls.is_some() {
                "https"
            } else {
                "http, loopback only"
            }
        );
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server::run(listener, tls, api, shutdown).await;
        log::info!("stopped");
        Ok(())
    })
}
