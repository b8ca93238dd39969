//! `store-bench`: the store benchmark of issue 2, through the library's public API only.
//!
//! - `create` builds a store of N users, each with one phone and 10 unlimited, never
//!   expiring codes, committing every `--batch` users in one [`Store::batch`], and reports
//!   wall time, users per second, rows and file sizes.
//! - `verify` measures in-process [`Store::verify`] latency on a small (1,000 users) and a
//!   large (1,000,000 users) store, for a valid code and for a wrong one, interleaving the
//!   two stores so that the machine's noise falls on both alike.
//! - `batch` measures the serial stage of sparekey-radiusd: [`Store::verify_many`] over
//!   batches of attempts (a mix of valid and wrong codes, each batch one transaction),
//!   reported as microseconds of one thread per attempt.
//!
//! Codes exist only in this process's memory: the store holds their digests, and the
//! sample file next to a store lists usernames only. Nothing here prints a code.

#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sparekey::config::{StoreConfig, Synchronous};
use sparekey::store::SqliteBackend;
use sparekey::{
    CodeRequest, Context, Decision, DeviceKind, DigestKey, NewUser, Passcode, Policy, Reason,
    Store, SystemClock,
};

const USAGE: &str = "\
usage:
  store-bench create --dir DIR --users N [--codes 10] [--batch 10000] [--sample 10000]
                     [--synchronous full|normal] [--path enrol|calls]
                     [--checkpoints inline|thread]
  store-bench verify --samples M [--users 1000000] [--small-users 1000] [--rounds 3]
                     [--synchronous full|normal|both] [--warmup 1000]
                     [--large-dir DIR] [--small-dir DIR] [--work-dir /tmp] [--keep]
  store-bench batch [--users 10000] [--codes 1] [--batch 64] [--attempts 100000]
                    [--wrong 0.1] [--rounds 5] [--synchronous normal] [--work-dir /tmp]

create makes DIR (which must not hold a store yet) with sparekey.db, sparekey.key (0600)
and sample-usernames.txt. --path enrol (the default) creates each user with Batch::enrol;
--path calls with Batch::add_user, add_device and generate_codes. --checkpoints thread
leaves checkpoints to a second connection on another thread. verify reuses stores made by create when given their
directories (it then issues new codes to the sampled users, since codes are never
written down), and otherwise builds them under --work-dir and deletes them afterwards.
batch builds a store under --work-dir, runs --rounds rounds of --attempts attempts on
random users in batches of --batch, and deletes it.";

const DB_FILE: &str = "sparekey.db";
const KEY_FILE: &str = "sparekey.key";
const SAMPLE_FILE: &str = "sample-usernames.txt";
const ACTOR: &str = "bench:store-bench";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("create") => Flags::parse(&args[1..]).and_then(|f| cmd_create(&f)),
        Some("verify") => Flags::parse(&args[1..]).and_then(|f| cmd_verify(&f)),
        Some("batch") => Flags::parse(&args[1..]).and_then(|f| cmd_batch(&f)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--name value` pairs and bare `--switch`es; every one must be taken by the command.
struct Flags {
    values: HashMap<String, Option<String>>,
    taken: std::cell::RefCell<Vec<String>>,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Self> {
        let mut values = HashMap::new();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}\n{USAGE}");
            };
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().cloned(),
                _ => None,
            };
            if values.insert(name.to_owned(), value).is_some() {
                bail!("--{name} given twice");
            }
        }
        Ok(Flags {
            values,
            taken: std::cell::RefCell::new(Vec::new()),
        })
    }

    fn raw(&self, name: &str) -> Result<Option<&str>> {
        self.taken.borrow_mut().push(name.to_owned());
        match self.values.get(name) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => bail!("--{name} needs a value"),
        }
    }

    fn get<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.raw(name)?
            .map(|v| {
                v.replace('_', "")
                    .parse()
                    .map_err(|e| anyhow!("--{name} {v:?}: {e}"))
            })
            .transpose()
    }

    fn switch(&self, name: &str) -> Result<bool> {
        self.taken.borrow_mut().push(name.to_owned());
        match self.values.get(name) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => bail!("--{name} takes no value (got {v:?})"),
        }
    }

    /// Refuses flags the command did not ask for: a typo must not silently run defaults.
    fn finish(&self) -> Result<()> {
        let taken = self.taken.borrow();
        let mut unknown: Vec<&String> = self.values.keys().filter(|k| !taken.contains(k)).collect();
        unknown.sort();
        if let Some(k) = unknown.first() {
            bail!("unknown flag --{k}\n{USAGE}");
        }
        Ok(())
    }
}

fn parse_sync(s: &str) -> Result<Synchronous> {
    match s {
        "full" => Ok(Synchronous::Full),
        "normal" => Ok(Synchronous::Normal),
        _ => bail!("--synchronous: expected full or normal, got {s:?}"),
    }
}

fn sync_name(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Full => "full",
        Synchronous::Normal => "normal",
    }
}

fn store_config(dir: &Path, synchronous: Synchronous) -> StoreConfig {
    StoreConfig {
        path: dir.join(DB_FILE),
        key_file: dir.join(KEY_FILE),
        busy_timeout_ms: 5000,
        synchronous,
    }
}

/// The username of user number `i`.
fn username(i: u64) -> String {
    format!("user{i:08}")
}

/// A sampled user and one of their valid codes, held in memory only.
struct Sample {
    username: String,
    code: Passcode,
}

/// What `create` measured.
struct Created {
    users: u64,
    codes_per_user: usize,
    elapsed: Duration,
    /// Database and WAL bytes right after the last batch.
    bytes_open: (u64, u64),
    /// The same after `Store::purge`, which ends with `PRAGMA wal_checkpoint(TRUNCATE)`.
    bytes_checkpointed: (u64, u64),
    /// How long that purge took (it also scans every code for expired ones).
    purge: Duration,
}

impl Created {
    fn report(&self) -> String {
        let n = self.users;
        let codes = n * self.codes_per_user as u64;
        // One event per user, per device and per code issued.
        let audit = n * (2 + self.codes_per_user as u64);
        let rows = n /* users */ + n /* logins */ + n /* devices */ + codes + audit;
        let secs = self.elapsed.as_secs_f64();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "created {n} users in {secs:.2} s ({:.0} users/s, {:.1} us/user)",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
        let _ = writeln!(
            s,
            "rows: {rows} ({n} users, {n} logins, {n} devices, {codes} codes, {audit} audit events)"
        );
        let (db, wal) = self.bytes_open;
        let (db2, wal2) = self.bytes_checkpointed;
        let _ = writeln!(
            s,
            "files after the last batch: db {} + wal {} = {}",
            mib(db),
            mib(wal),
            mib(db + wal)
        );
        let _ = writeln!(
            s,
            "files after Store::purge (wal_checkpoint(TRUNCATE)): db {} + wal {} = {}; purge took {:.2} s",
            mib(db2),
            mib(wal2),
            mib(db2 + wal2),
            self.purge.as_secs_f64()
        );
        let _ = write!(
            s,
            "RESULT create users={n} secs={secs:.3} users_per_s={:.0} db_open={db} wal_open={wal} db_checkpointed={db2} wal_checkpointed={wal2} purge_secs={:.3} secs_with_purge={:.3}",
            n as f64 / secs,
            self.purge.as_secs_f64(),
            secs + self.purge.as_secs_f64()
        );
        s
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The sizes of the database and of its WAL (0 when there is none), as they are now.
fn store_bytes(db: &Path) -> (u64, u64) {
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    (
        size(db),
        size(&PathBuf::from(format!("{}-wal", db.display()))),
    )
}

/// Which library calls create a user.
#[derive(Clone, Copy)]
enum CreatePath {
    /// `Batch::enrol`: the user, the device and the codes in one call.
    Enrol,
    /// `Batch::add_user`, `add_device` and `generate_codes`, as an admin would one by one.
    Calls,
}

/// Who checkpoints the log during a build.
#[derive(Clone, Copy)]
enum Checkpoints {
    /// The writer, at the commit that passes 1000 pages (the library's default).
    Inline,
    /// A second connection on its own thread (`Store::defer_checkpoints` on the writer).
    Thread,
}

/// Options of a store build.
struct BuildOptions {
    path: CreatePath,
    checkpoints: Checkpoints,
    users: u64,
    codes: usize,
    batch: u64,
    sample: u64,
    synchronous: Synchronous,
}

/// Creates a store of `opt.users` users in `dir` and returns the sampled users with one
/// code each. `dir` is created (0700) if missing and must not hold a store.
fn build_store(dir: &Path, opt: &BuildOptions) -> Result<(Vec<Sample>, Created)> {
    if opt.users == 0 || opt.batch == 0 {
        bail!("--users and --batch must be at least 1");
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let cfg = store_config(dir, opt.synchronous);
    let key = DigestKey::generate()?;
    key.write_new(&cfg.key_file)?;

    // Spread the sample over the whole store: the first user of every `stride`.
    let sample = opt.sample.clamp(1, opt.users);
    let stride = opt.users / sample;
    let mut samples: Vec<Sample> = Vec::with_capacity(sample as usize);
    let req = CodeRequest {
        count: opt.codes,
        reuse_count: 0,
        valid_secs: 0,
        ..Default::default()
    };
    let ctx = Context::new(ACTOR);

    let start = Instant::now();
    let backend = SqliteBackend::create(&cfg)?;
    let mut store = Store::with_backend(
        Box::new(backend),
        key,
        Policy::default(),
        Arc::new(SystemClock),
    )?;
    // With `--checkpoints thread`, a second connection folds the log into the database
    // while the writer goes on with the next batch, as sparekey-radiusd's checkpointer
    // does; otherwise the writer checkpoints at the commit that passes 1000 pages.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let checkpointer = match opt.checkpoints {
            Checkpoints::Inline => None,
            Checkpoints::Thread => {
                store.defer_checkpoints()?;
                let mut other = open_store(dir, opt.synchronous)?;
                let stop = &stop;
                Some(scope.spawn(move || -> Result<()> {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        other.checkpoint()?;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(())
                }))
            }
        };
        let r = fill(
            &mut store,
            opt,
            &ctx,
            &req,
            (stride, sample),
            &mut samples,
            start,
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = checkpointer {
            t.join()
                .map_err(|_| anyhow!("the checkpointer panicked"))??;
        }
        r
    })?;
    let elapsed = start.elapsed();
    let bytes_open = store_bytes(&cfg.path);
    // The library reaches `wal_checkpoint(TRUNCATE)` only through purge; with no code
    // expired and nobody in the trash it removes nothing else.
    let t = Instant::now();
    store.purge(&ctx)?;
    let purge = t.elapsed();
    let bytes_checkpointed = store_bytes(&cfg.path);
    drop(store);

    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(SAMPLE_FILE))
        .with_context(|| format!("creating {}", dir.join(SAMPLE_FILE).display()))?;
    writeln!(f, "# users={} codes={}", opt.users, opt.codes)?;
    for s in &samples {
        writeln!(f, "{}", s.username)?;
    }
    Ok((
        samples,
        Created {
            users: opt.users,
            codes_per_user: opt.codes,
            elapsed,
            bytes_open,
            bytes_checkpointed,
            purge,
        },
    ))
}

/// Adds `opt.users` users in batches of `opt.batch`, keeping one code of every
/// `stride`-th user in `samples`, up to `sample` of them.
fn fill(
    store: &mut Store,
    opt: &BuildOptions,
    ctx: &Context,
    req: &CodeRequest,
    (stride, sample): (u64, u64),
    samples: &mut Vec<Sample>,
    start: Instant,
) -> Result<()> {
    let mut next = 0u64;
    let mut last_report = (Instant::now(), 0u64);
    let report_every = (opt.users / 10).max(opt.batch);
    while next < opt.users {
        let end = (next + opt.batch).min(opt.users);
        store.batch(ctx, |b| {
            for i in next..end {
                let name = username(i);
                let new = NewUser {
                    username: name.clone(),
                    ..Default::default()
                };
                let mut issued = match opt.path {
                    CreatePath::Enrol => b.enrol(new, DeviceKind::Phone, None, req)?.issued,
                    CreatePath::Calls => {
                        b.add_user(new)?;
                        b.add_device(&name, DeviceKind::Phone, None)?;
                        b.generate_codes(&name, req)?
                    }
                };
                if i % stride == 0 && (samples.len() as u64) < sample {
                    if let Some(c) = issued.codes.pop() {
                        samples.push(Sample {
                            username: name,
                            code: c.code,
                        });
                    }
                }
            }
            Ok(())
        })?;
        next = end;
        if next - last_report.1 >= report_every || next == opt.users {
            let dt = last_report.0.elapsed().as_secs_f64();
            eprintln!(
                "  {next:>9} users  {:7.1} s  {:8.0} users/s over the last {} users",
                start.elapsed().as_secs_f64(),
                (next - last_report.1) as f64 / dt,
                next - last_report.1
            );
            last_report = (Instant::now(), next);
        }
    }
    Ok(())
}

fn cmd_create(flags: &Flags) -> Result<()> {
    let dir: PathBuf = flags.get("dir")?.context("--dir is required")?;
    let opt = BuildOptions {
        path: match flags.raw("path")?.unwrap_or("enrol") {
            "enrol" => CreatePath::Enrol,
            "calls" => CreatePath::Calls,
            p => bail!("--path: expected enrol or calls, got {p:?}"),
        },
        checkpoints: match flags.raw("checkpoints")?.unwrap_or("inline") {
            "inline" => Checkpoints::Inline,
            "thread" => Checkpoints::Thread,
            c => bail!("--checkpoints: expected inline or thread, got {c:?}"),
        },
        users: flags.get("users")?.context("--users is required")?,
        codes: flags.get("codes")?.unwrap_or(10),
        batch: flags.get("batch")?.unwrap_or(10_000),
        sample: flags.get("sample")?.unwrap_or(10_000),
        synchronous: flags
            .raw("synchronous")?
            .map_or(Ok(Synchronous::Full), parse_sync)?,
    };
    flags.finish()?;
    if dir.join(DB_FILE).exists() {
        bail!("{} already holds a store", dir.display());
    }
    eprintln!(
        "creating {} users x 1 device x {} codes in {} (batch {}, synchronous={}, path {})",
        opt.users,
        opt.codes,
        dir.display(),
        opt.batch,
        sync_name(opt.synchronous),
        match opt.path {
            CreatePath::Enrol => "enrol",
            CreatePath::Calls => "calls",
        }
    );
    let (_samples, created) = build_store(&dir, &opt)?;
    println!("{}", created.report());
    Ok(())
}

/// A store under test: where it is and its sampled users with a valid code each.
struct Bench {
    label: String,
    dir: PathBuf,
    samples: Vec<Sample>,
    /// Built by this run, so deleted at its end unless `--keep`.
    owned: bool,
}

/// The policy for measuring: lockout off, so that thousands of wrong codes against the
/// same sampled users keep taking the full wrong-code path (compare against every code,
/// count the failure) instead of the shorter locked-out one.
fn bench_policy() -> Policy {
    Policy {
        lockout_threshold: 0,
        ..Policy::default()
    }
}

fn open_store(dir: &Path, synchronous: Synchronous) -> Result<Store> {
    let cfg = store_config(dir, synchronous);
    let key = DigestKey::load(&cfg.key_file)?;
    let backend = SqliteBackend::open(&cfg)?;
    Ok(Store::with_backend(
        Box::new(backend),
        key,
        bench_policy(),
        Arc::new(SystemClock),
    )?)
}

/// Reuses a store made by `create`: reads its sampled usernames and issues each of them
/// new codes (codes are never written down, so the old ones are unknown here).
fn reuse_store(label: &str, dir: &Path, codes: usize) -> Result<Bench> {
    let text = fs::read_to_string(dir.join(SAMPLE_FILE))
        .with_context(|| format!("reading {}", dir.join(SAMPLE_FILE).display()))?;
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    if names.is_empty() {
        bail!("{}: no sampled users", dir.join(SAMPLE_FILE).display());
    }
    let header = text.lines().next().unwrap_or_default();
    let mut store = open_store(dir, Synchronous::Normal)?;
    let req = CodeRequest {
        count: codes,
        reuse_count: 0,
        valid_secs: 0,
        ..Default::default()
    };
    let ctx = Context::new(ACTOR);
    let samples = store.batch(&ctx, |b| {
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            let mut issued = b.generate_codes(name, &req)?;
            if let Some(c) = issued.codes.pop() {
                out.push(Sample {
                    username: (*name).to_owned(),
                    code: c.code,
                });
            }
        }
        Ok(out)
    })?;
    eprintln!(
        "reusing {} ({header}): issued new codes to {} sampled users",
        dir.display(),
        samples.len()
    );
    Ok(Bench {
        label: label.to_owned(),
        dir: dir.to_owned(),
        samples,
        owned: false,
    })
}

/// A small deterministic generator for picking samples and wrong codes: the order of
/// attempts needs no secrecy, only spread.
struct SplitMix(u64);

impl SplitMix {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        SplitMix(t ^ u64::from(std::process::id()))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Nine random digits: a well-formed code that is, with odds of 10 in 10^9, none
    /// of the user's (the verdict is checked, so a hit would stop the run, not skew it).
    fn wrong_code(&mut self) -> String {
        format!("{:09}", self.next() % 1_000_000_000)
    }
}

const KINDS: [&str; 2] = ["valid", "wrong"];

/// Latency summary of one series, in microseconds.
#[derive(Clone, Copy)]
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// How many attempts took over 1 ms.
    over_1ms: usize,
}

fn summarize(lat: &mut [Duration]) -> Summary {
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    // Nearest rank: the smallest value with at least p of the series at or below it.
    let pct = |p: f64| {
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        us(lat[rank - 1])
    };
    Summary {
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        p999: pct(0.999),
        max: lat.last().map_or(0.0, |d| us(*d)),
        over_1ms: lat.len() - lat.partition_point(|d| *d <= Duration::from_millis(1)),
    }
}

/// One round: `m` attempts of each kind on each store, interleaved. Returns
/// `[store][kind]` summaries.
fn measure(
    stores: &mut [Store; 2],
    benches: &[Bench; 2],
    m: usize,
    warmup: usize,
    rng: &mut SplitMix,
) -> Result<[[Summary; 2]; 2]> {
    let ctx = Context::new(ACTOR);
    let mut lat: [[Vec<Duration>; 2]; 2] = Default::default();
    for l in lat.iter_mut().flatten() {
        l.reserve(m);
    }
    for i in 0..warmup + m {
        // Alternate which store goes first so that neither always follows the other.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for kind in 0..2 {
            for &s in &order {
                let sample = &benches[s].samples[rng.below(benches[s].samples.len())];
                let wrong = rng.wrong_code();
                let code = if kind == 0 {
                    sample.code.expose()
                } else {
                    wrong.as_str()
                };
                let t = Instant::now();
                let verdict = stores[s].verify(&sample.username, code, &ctx)?;
                let d = t.elapsed();
                let expected = if kind == 0 {
                    Decision::Accept
                } else {
                    Decision::Reject(Reason::WrongCode)
                };
                if verdict.decision != expected {
                    bail!(
                        "{} store, {} code for {}: got {:?}, expected {expected:?}",
                        benches[s].label,
                        KINDS[kind],
                        sample.username,
                        verdict.decision
                    );
                }
                if i >= warmup {
                    lat[s][kind].push(d);
                }
            }
        }
    }
    let [[a, b], [c, d]] = &mut lat;
    Ok([[summarize(a), summarize(b)], [summarize(c), summarize(d)]])
}

/// Median, min and max of a few rounds' values.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (
        median,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

fn cmd_verify(flags: &Flags) -> Result<()> {
    let m: usize = flags.get("samples")?.unwrap_or(20_000);
    let large_users: u64 = flags.get("users")?.unwrap_or(1_000_000);
    let small_users: u64 = flags.get("small-users")?.unwrap_or(1_000);
    let rounds: usize = flags.get("rounds")?.unwrap_or(3);
    let warmup: usize = flags.get("warmup")?.unwrap_or(1_000);
    let modes = match flags.raw("synchronous")?.unwrap_or("both") {
        "both" => vec![Synchronous::Full, Synchronous::Normal],
        s => vec![parse_sync(s)?],
    };
    let large_dir: Option<PathBuf> = flags.get("large-dir")?;
    let small_dir: Option<PathBuf> = flags.get("small-dir")?;
    let work_dir: PathBuf = flags
        .get("work-dir")?
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let keep = flags.switch("keep")?;
    flags.finish()?;
    if m == 0 || rounds == 0 {
        bail!("--samples and --rounds must be at least 1");
    }

    let run_dir = work_dir.join(format!("store-bench-{}", std::process::id()));
    let get = |label: &str, users: u64, dir: &Option<PathBuf>| -> Result<Bench> {
        if let Some(d) = dir {
            return reuse_store(label, d, 10);
        }
        let d = run_dir.join(label);
        eprintln!(
            "building the {label} store ({users} users) in {}",
            d.display()
        );
        let (samples, created) = build_store(
            &d,
            &BuildOptions {
                path: CreatePath::Enrol,
                checkpoints: Checkpoints::Inline,
                users,
                codes: 10,
                batch: 10_000,
                sample: 10_000,
                synchronous: Synchronous::Full,
            },
        )?;
        eprintln!("{}", created.report());
        Ok(Bench {
            label: label.to_owned(),
            dir: d,
            samples,
            owned: true,
        })
    };
    let benches = [
        get(&human(small_users), small_users, &small_dir)?,
        get(&human(large_users), large_users, &large_dir)?,
    ];
    let result = run_rounds(&benches, &modes, m, warmup, rounds);
    for b in &benches {
        if b.owned && !keep {
            fs::remove_dir_all(&b.dir).with_context(|| format!("removing {}", b.dir.display()))?;
        }
    }
    if !keep && (benches.iter().any(|b| b.owned)) {
        let _ = fs::remove_dir(&run_dir);
    }
    result
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn run_rounds(
    benches: &[Bench; 2],
    modes: &[Synchronous],
    m: usize,
    warmup: usize,
    rounds: usize,
) -> Result<()> {
    let mut rng = SplitMix::seeded();
    // results[mode][round] = [store][kind]
    let mut results: Vec<Vec<[[Summary; 2]; 2]>> = vec![Vec::new(); modes.len()];
    for round in 1..=rounds {
        for (mi, &mode) in modes.iter().enumerate() {
            let mut stores = [
                open_store(&benches[0].dir, mode)?,
                open_store(&benches[1].dir, mode)?,
            ];
            let r = measure(&mut stores, benches, m, warmup, &mut rng)?;
            println!(
                "round {round}/{rounds}, synchronous={}, {m} attempts of each kind per store after {warmup} warm-up (us)",
                sync_name(mode)
            );
            println!(
                "  {:<6} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                "store", "code", "p50", "p90", "p99", "p99.9", "max", ">1ms"
            );
            for k in 0..2 {
                for s in 0..2 {
                    let x = r[s][k];
                    println!(
                        "  {:<6} {:<6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8}",
                        benches[s].label, KINDS[k], x.p50, x.p90, x.p99, x.p999, x.max, x.over_1ms
                    );
                }
                println!(
                    "  ratio of medians {}/{} ({}): {:.3}",
                    benches[1].label,
                    benches[0].label,
                    KINDS[k],
                    r[1][k].p50 / r[0][k].p50
                );
            }
            results[mi].push(r);
        }
    }
    println!("\nsummary over {rounds} round(s): median [min, max] of the rounds' figures (us)");
    for (mi, &mode) in modes.iter().enumerate() {
        let rs = &results[mi];
        println!("synchronous={}", sync_name(mode));
        for k in 0..2 {
            for s in 0..2 {
                let col = |f: fn(&Summary) -> f64| spread(rs.iter().map(|r| f(&r[s][k])).collect());
                let fmt = |(a, b, c): (f64, f64, f64)| format!("{a:.1} [{b:.1}, {c:.1}]");
                println!(
                    "  {:<4} {:<5} p50 {:<22} p90 {:<22} p99 {:<22} p99.9 {:<24} max {:<26} >1ms {}",
                    benches[s].label,
                    KINDS[k],
                    fmt(col(|x| x.p50)),
                    fmt(col(|x| x.p90)),
                    fmt(col(|x| x.p99)),
                    fmt(col(|x| x.p999)),
                    fmt(col(|x| x.max)),
                    fmt(col(|x| x.over_1ms as f64)),
                );
            }
            let (r, lo, hi) = spread(rs.iter().map(|r| r[1][k].p50 / r[0][k].p50).collect());
            println!(
                "  ratio of medians {}/{} {}: {r:.3} [{lo:.3}, {hi:.3}]",
                benches[1].label, benches[0].label, KINDS[k]
            );
            println!(
                "RESULT verify sync={} code={} small_p50={:.1} large_p50={:.1} small_p99={:.1} large_p99={:.1} ratio={r:.3}",
                sync_name(mode),
                KINDS[k],
                spread(rs.iter().map(|r| r[0][k].p50).collect()).0,
                spread(rs.iter().map(|r| r[1][k].p50).collect()).0,
                spread(rs.iter().map(|r| r[0][k].p99).collect()).0,
                spread(rs.iter().map(|r| r[1][k].p99).collect()).0,
            );
        }
    }
    Ok(())
}

/// What `batch` runs.
struct BatchOptions {
    users: u64,
    codes: usize,
    batch: usize,
    attempts: usize,
    wrong: f64,
    rounds: usize,
    synchronous: Synchronous,
}

/// `batch`: the writer's work per attempt, without the network or the log's sync.
fn cmd_batch(flags: &Flags) -> Result<()> {
    let opt = BatchOptions {
        users: flags.get("users")?.unwrap_or(10_000),
        codes: flags.get("codes")?.unwrap_or(1),
        batch: flags.get("batch")?.unwrap_or(64),
        attempts: flags.get("attempts")?.unwrap_or(100_000),
        wrong: flags.get("wrong")?.unwrap_or(0.1),
        rounds: flags.get("rounds")?.unwrap_or(5),
        synchronous: flags
            .raw("synchronous")?
            .map_or(Ok(Synchronous::Normal), parse_sync)?,
    };
    let work_dir: PathBuf = flags
        .get("work-dir")?
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    flags.finish()?;
    if opt.batch == 0 || opt.attempts == 0 || opt.rounds == 0 || !(0.0..=1.0).contains(&opt.wrong) {
        bail!("--batch, --attempts and --rounds must be at least 1, --wrong within 0..=1");
    }
    let dir = work_dir.join(format!("store-bench-batch-{}", std::process::id()));
    let result = run_batches(&dir, &opt);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_batches(dir: &Path, opt: &BatchOptions) -> Result<()> {
    let BatchOptions {
        users,
        codes,
        batch,
        attempts,
        wrong,
        rounds,
        synchronous,
    } = *opt;
    eprintln!(
        "building {users} users x {codes} codes in {}",
        dir.display()
    );
    let (samples, _) = build_store(
        dir,
        &BuildOptions {
            path: CreatePath::Enrol,
            checkpoints: Checkpoints::Inline,
            users,
            codes,
            batch: 10_000,
            sample: users,
            synchronous,
        },
    )?;
    let mut store = open_store(dir, synchronous)?;
    let mut rng = SplitMix::seeded();
    let ctx = Context::new(ACTOR);
    let threshold = (wrong * u64::MAX as f64) as u64;
    let mut per_attempt = Vec::with_capacity(rounds);
    // Round 0 warms the cache and is not counted.
    for round in 0..=rounds {
        let mut wrongs = Vec::with_capacity(batch);
        let mut done = 0;
        let mut elapsed = Duration::ZERO;
        while done < attempts {
            let n = batch.min(attempts - done);
            let picked: Vec<&Sample> = (0..n).map(|_| &samples[rng.below(samples.len())]).collect();
            wrongs.clear();
            wrongs.extend((0..n).map(|_| (rng.next() < threshold).then(|| rng.wrong_code())));
            let batch: Vec<sparekey::Attempt<'_>> = picked
                .iter()
                .zip(&wrongs)
                .map(|(s, w)| sparekey::Attempt {
                    login: &s.username,
                    passcode: w.as_deref().unwrap_or(s.code.expose()),
                    ctx: &ctx,
                })
                .collect();
            let t = Instant::now();
            let verdicts = store.verify_many(&batch)?;
            elapsed += t.elapsed();
            for (v, w) in verdicts.iter().zip(&wrongs) {
                let expected = if w.is_some() {
                    Decision::Reject(Reason::WrongCode)
                } else {
                    Decision::Accept
                };
                match v {
                    Ok(v) if v.decision == expected => {}
                    other => bail!("got {other:?}, expected {expected:?}"),
                }
            }
            done += n;
        }
        let us = elapsed.as_secs_f64() * 1e6 / attempts as f64;
        if round > 0 {
            println!(
                "round {round}/{rounds}: {us:.2} us per attempt ({:.0} attempts/s)",
                1e6 / us
            );
            per_attempt.push(us);
        }
    }
    let (m, lo, hi) = spread(per_attempt);
    println!(
        "RESULT batch users={users} codes={codes} batch={batch} wrong={wrong} sync={} us_per_attempt={m:.2} min={lo:.2} max={hi:.2}",
        sync_name(synchronous)
    );
    Ok(())
}
