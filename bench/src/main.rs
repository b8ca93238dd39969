//! `sparekey-bench`: the RADIUS load generator and its helpers.
//!
//! - `load`: drive any RADIUS server with PAP requests and report rate and latency;
//! - `setup`: make benchmark users for sparekey-radiusd and FreeRADIUS;
//! - `null-responder`: sparekey-radiusd's packet handling with no store (the ceiling);
//!   with `--sync-log`, it also writes and syncs a file per batch (the durable ceiling);
//! - `timing-setup`, `timing`: reject response times by case, with two-sample tests;
//! - `pauses`: whether the machine itself stops (a spinning thread's gaps), with and
//!   without a stream of syncs beside it.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sparekey_bench::radius_load::{self, LoadConfig, Mode};

/// The allocator sparekey-radiusd runs with, so that the null responder is still its
/// packet handling without the store (and every server meets the same generator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sparekey-bench",
    about = "RADIUS load generator and benchmark helpers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct NullArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    secret: String,
    #[arg(long)]
    users: PathBuf,
    /// Write --log-bytes per answer to this file and fdatasync it before each batch's
    /// answers leave, as sparekey-radiusd syncs its store's log (a durable ceiling)
    #[arg(long)]
    sync_log: Option<PathBuf>,
    /// Bytes written to --sync-log per answer
    #[arg(long, default_value_t = 2048)]
    log_bytes: usize,
    /// The writer's [radius] commit_interval_us (sparekey-radiusd's default if not given)
    #[arg(long)]
    commit_interval_us: Option<u64>,
    /// The writer's [radius] writer_nice (sparekey-radiusd's default, 0, if not given)
    #[arg(long, allow_negative_numbers = true)]
    writer_nice: Option<i32>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send PAP Access-Requests and report rate, latency and answers
    Load {
        /// The server, IP:port
        #[arg(long)]
        server: SocketAddr,
        /// The shared secret
        #[arg(long)]
        secret: String,
        /// `user,code` lines (codes reusable and unexpiring)
        #[arg(long)]
        users: PathBuf,
        /// Requests in flight (closed loop)
        #[arg(long, default_value_t = 64, conflicts_with = "rate")]
        concurrency: usize,
        /// Requests per second (open loop)
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds to send for
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many requests
        #[arg(long)]
        requests: Option<u64>,
        /// Fraction of requests with a wrong code
        #[arg(long, default_value_t = 0.1)]
        wrong_ratio: f64,
        /// Milliseconds before a retransmission
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Retransmissions before a request counts as lost
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// Client sockets (threads)
        #[arg(long, default_value_t = 2)]
        sockets: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object instead of a line of text
        #[arg(long)]
        json: bool,
        /// Accept replies without a Message-Authenticator (FreeRADIUS before 3.2.5)
        #[arg(long)]
        lenient_replies: bool,
        /// Write every answered request here as `sent_at_us latency_us`, in send order
        #[arg(long)]
        timeline: Option<PathBuf>,
    },
    /// Make N benchmark users: a sparekey store, users.csv, and FreeRADIUS's users file
    Setup {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        secret: String,
        /// The store's synchronous setting: full or normal
        #[arg(long, default_value = "full")]
        synchronous: String,
    },
    /// Answer like sparekey-radiusd, from users.csv held in memory, with no store
    NullResponder(NullArgs),
    /// Make users for `timing`: many per case (unknown, wrong code, disabled, locked out,
    /// not enrolled, bypass, valid), a store, and timing-users.csv
    TimingSetup {
        #[arg(long)]
        dir: PathBuf,
        /// Distinct users per case
        #[arg(long, default_value_t = 2000)]
        per_case: usize,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        secret: String,
        /// The store's synchronous setting: full or normal
        #[arg(long, default_value = "full")]
        synchronous: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Time rejects by case, one request in flight, cases interleaved at random; print
    /// each case's distribution and two-sample tests (KS, Mann-Whitney) for every pair
    Timing {
        /// The server, IP:port
        #[arg(long)]
        server: SocketAddr,
        /// The shared secret
        #[arg(long)]
        secret: String,
        /// timing-users.csv from timing-setup
        #[arg(long)]
        users: PathBuf,
        /// Measured requests per case
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
        /// Requests sent first and not measured
        #[arg(long, default_value_t = 2_000)]
        warmup: usize,
        /// Cases, comma-separated (default: all)
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
        /// Milliseconds to wait for an answer before counting the request lost
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write every sample as `case,nanoseconds` lines to this file
        #[arg(long)]
        raw: Option<PathBuf>,
        /// The server's config: after the run, count the audited reasons in its store
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Spin on one thread and report every gap over 2 ms; with --syncs-per-sec, write
    /// and fdatasync 4 KiB at that rate beside it (BENCHMARKS.md: the host's pauses)
    Pauses {
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// 0: spin only
        #[arg(long, default_value_t = 0.0)]
        syncs_per_sec: f64,
        /// Where the scratch file goes (on the disk under test)
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // As sparekey-radiusd does: the null responders are its packet handling, and the
    // generator's own latencies are measured the same way.
    sparekey_radiusd::without_huge_pages().context("cannot turn transparent huge pages off")?;
    match Cli::parse().command {
        Command::Load {
            server,
            secret,
            users,
            concurrency,
            rate,
            duration,
            requests,
            wrong_ratio,
            timeout_ms,
            retries,
            sockets,
            seed,
            json,
            lenient_replies,
            timeline,
        } => {
            let cfg = LoadConfig {
                server,
                secret: secret.into_bytes(),
                users: Arc::new(radius_load::read_users(&users)?),
                wrong_ratio,
                mode: rate.map_or(Mode::Closed { concurrency }, |rate| Mode::Open { rate }),
                duration: Duration::from_secs_f64(duration),
                max_requests: requests,
                timeout: Duration::from_millis(timeout_ms),
                retries,
                sockets,
                seed,
                require_reply_message_authenticator: !lenient_replies,
            };
            let r = radius_load::run(&cfg)?;
            if json {
                println!(
                    "{{\"rate\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"sent\":{},\"answered\":{},\"accepts\":{},\"rejects\":{},\"unexpected\":{},\"bad_replies\":{},\"lost\":{},\"retransmits\":{},\"skipped\":{}}}",
                    r.rate(),
                    r.quantile_us(0.5) as f64 / 1000.0,
                    r.quantile_us(0.99) as f64 / 1000.0,
                    r.quantile_us(0.999) as f64 / 1000.0,
                    r.sent,
                    r.answered,
                    r.accepts,
                    r.rejects,
                    r.unexpected,
                    r.bad_replies,
                    r.lost,
                    r.retransmits,
                    r.skipped
                );
            } else {
                println!("{}", r.summary());
            }
            if let Some(path) = timeline {
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                r.write_timeline(std::io::BufWriter::new(file))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !r.all_as_expected() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Setup {
            dir,
            users,
            listen,
            secret,
            synchronous,
        } => sparekey_bench::setup::make(&dir, users, &listen, &secret, &synchronous),
        Command::NullResponder(args) => null_responder(args),
        Command::TimingSetup {
            dir,
            per_case,
            listen,
            secret,
            synchronous,
            seed,
        } => {
            sparekey_bench::timing::setup(&dir, per_case, &listen, &secret, &synchronous, seed)?;
            Ok(())
        }
        Command::Timing {
            server,
            secret,
            users,
            samples,
            warmup,
            cases,
            timeout_ms,
            seed,
            raw,
            config,
        } => timing(
            server, secret, users, samples, warmup, cases, timeout_ms, seed, raw, config,
        ),
        Command::Pauses {
            seconds,
            syncs_per_sec,
            dir,
        } => {
            let report = sparekey_bench::pauses::run(seconds, syncs_per_sec, &dir)?;
            print!("{}", report.summary());
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn timing(
    server: SocketAddr,
    secret: String,
    users: PathBuf,
    samples: usize,
    warmup: usize,
    cases: Vec<String>,
    timeout_ms: u64,
    seed: u64,
    raw: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use sparekey_bench::timing::{self, Case, TimingConfig};
    let cases = if cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        cases
            .iter()
            .map(|c| Case::parse(c).ok_or_else(|| anyhow::anyhow!("unknown case {c}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let cfg = TimingConfig {
        server,
        secret: secret.into_bytes(),
        targets: timing::read_targets(&users)?,
        cases,
        samples,
        warmup,
        timeout: Duration::from_millis(timeout_ms),
        seed,
    };
    let s = timing::run(&cfg)?;
    print!("{}", timing::report(&s));
    if let Some(path) = raw {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(f, "case,ns")?;
        for (case, v) in &s.by_case {
            for x in v {
                writeln!(f, "{},{x}", case.as_str())?;
            }
        }
        f.flush()?;
    }
    if let Some(path) = config {
        let config = sparekey::Config::load(&path)?;
        let counts = timing::audit_reasons(&config)?;
        let line: Vec<String> = counts.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!(
            "audited (radius auth events, warm-up included): {}",
            line.join(" ")
        );
    }
    if s.lost > 0 || s.unexpected > 0 {
        anyhow::bail!("{} lost, {} unexpected answers", s.lost, s.unexpected);
    }
    Ok(())
}

fn null_responder(args: NullArgs) -> anyhow::Result<()> {
    let NullArgs {
        listen,
        secret,
        users,
        sync_log,
        log_bytes,
        commit_interval_us,
        writer_nice,
    } = args;
    let users = radius_load::read_users(&users)?;
    let verifier = match sync_log {
        Some(path) => {
            let log = sparekey_bench::null::SyncLog::create(&path, log_bytes)
                .with_context(|| format!("cannot create {}", path.display()))?;
            sparekey_bench::null::NullVerifier::with_log(&users, log)
        }
        None => sparekey_bench::null::NullVerifier::new(&users),
    };
    let interval =
        commit_interval_us.map_or(String::new(), |us| format!("commit_interval_us = {us}\n"));
    let nice = writer_nice.map_or(String::new(), |n| format!("writer_nice = {n}\n"));
    let text = format!(
        "[store]\npath = \"unused\"\nkey_file = \"unused\"\n[radius]\nlisten = [\"{listen}\"]\n{interval}{nice}\
         [[radius.client]]\nname = \"bench\"\naddress = \"127.0.0.1\"\nsecret = \"{secret}\"\nrate_limit = 0\n"
    );
    let config = sparekey::Config::parse(&text, std::path::Path::new("/null-responder.toml"))?;
    let radius =
        sparekey_radiusd::config::RadiusConfig::from_config(&config).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::from_std(sparekey_radiusd::server::bind(listen)?)?;
        let verifier = Box::new(verifier);
        let counters = Arc::new(sparekey_radiusd::server::Counters::default());
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        sparekey_radiusd::server::run(vec![socket], verifier, &radius, None, counters, shutdown)
            .await?;
        Ok(())
    })
}
