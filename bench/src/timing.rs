//! Timing side channel through RADIUS: do the rejects of an unknown user, a known user
//! with a wrong code, a disabled user, a locked-out user (and a user who is not enrolled
//! or in bypass status) take the same time, as a network observer sees it?
//!
//! [`setup`] makes a store with many distinct users per case; [`run`] sends PAP
//! Access-Requests to a running sparekey-radiusd one at a time, the case of each drawn at
//! random from a shuffled schedule (so machine noise hits every case alike), and keeps
//! the time from send to answer; [`report`] prints each case's distribution and, for
//! every pair of reject cases, a two-sample Kolmogorov–Smirnov test and a Mann–Whitney U
//! test ([`stats`]).
//!
//! Lockout: a wrong-code user must stay a wrong-code user for the whole run, so the store
//! is made with `lockout_threshold = 1000` (the highest the config allows) and each case
//! has many users (2,000 by default), the schedule visiting them in turn: at 20,000
//! samples a user sees about 10 attempts, far below the threshold. A threshold of 0 would
//! not do: the wrong-code path would then differ from the deployed one (it never locks),
//! and one user hit 20,000 times would keep their pages hot in a way no real target is.
//! Locked-out users are locked by the real verification path (one wrong code each under a
//! threshold of 1 while the store is made).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sparekey::store::CodeRequest;
use sparekey::{Config, Context, Decision, DeviceKind, NewUser, Reason, Status, Store};
use sparekey_radiusd::client::{self, Reply};

use crate::rng::Rng;

/// What kind of account a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Case {
    /// No user has this name.
    Unknown,
    /// An active, enrolled user, with a code that is not theirs.
    WrongCode,
    /// A disabled user (with a device and codes).
    Disabled,
    /// A locked-out user (with a device and codes).
    LockedOut,
    /// An active user with codes but no device.
    NotEnrolled,
    /// A user in bypass status (RADIUS denies them by default).
    BypassDenied,
    /// An active, enrolled user with their valid code: accepted, for reference.
    Valid,
}

impl Case {
    /// Every case, reject cases first.
    pub const ALL: [Case; 7] = [
        Case::Unknown,
        Case::WrongCode,
        Case::Disabled,
        Case::LockedOut,
        Case::NotEnrolled,
        Case::BypassDenied,
        Case::Valid,
    ];

    /// The name used in files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Case::Unknown => "unknown_user",
            Case::WrongCode => "wrong_code",
            Case::Disabled => "disabled",
            Case::LockedOut => "locked_out",
            Case::NotEnrolled => "not_enrolled",
            Case::BypassDenied => "bypass_denied",
            Case::Valid => "valid_code",
        }
    }

    /// The case a name stands for.
    pub fn parse(s: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The answer a correct server gives.
    pub fn expect(self) -> Reply {
        if self == Case::Valid {
            Reply::Accept
        } else {
            Reply::Reject
        }
    }

    /// The reason the server must audit (checked after a run by [`audit_reasons`]).
    pub fn reason(self) -> Option<Reason> {
        match self {
            Case::Unknown => Some(Reason::UnknownUser),
            Case::WrongCode => Some(Reason::WrongCode),
            Case::Disabled => Some(Reason::Disabled),
            Case::LockedOut => Some(Reason::LockedOut),
            Case::NotEnrolled => Some(Reason::NotEnrolled),
            Case::BypassDenied => Some(Reason::BypassDenied),
            Case::Valid => None,
        }
    }
}

/// One account to send requests for: the login and the code it holds (valid for
/// [`Case::Valid`], empty otherwise: the others are sent a code that is not theirs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The case.
    pub case: Case,
    /// The login.
    pub user: String,
    /// The valid code, for [`Case::Valid`].
    pub code: String,
}

/// The highest lockout threshold the config allows; see the module's note on lockout.
pub const LOCKOUT_THRESHOLD: u32 = 1000;

/// Writes `dir/sparekey.toml` (listening on `listen`, one client `127.0.0.1` with
/// `secret`, no rate limit, `lockout_threshold = 1000`), the key and the store, and
/// `dir/timing-users.csv` (`case,user,code`, mode 0600): `per_case` distinct users for
/// each case, their names drawn at random from one name space so that the unknown ones
/// fall between the known ones in every index.
pub fn setup(
    dir: &Path,
    per_case: usize,
    listen: &str,
    secret: &str,
    synchronous: &str,
    seed: u64,
) -> anyhow::Result<Vec<Target>> {
    if per_case == 0 {
        bail!("--per-case must be at least 1");
    }
    let mut config =
        crate::setup::write_config(dir, listen, secret, synchronous, LOCKOUT_THRESHOLD)?;
    if config.policy.lockout_threshold != LOCKOUT_THRESHOLD {
        bail!("the generated config did not take lockout_threshold = {LOCKOUT_THRESHOLD}");
    }
    // While the store is made, one wrong code locks: that is how the locked-out users get
    // their lockout, through the verification path itself. The file keeps 1000.
    config.policy.lockout_threshold = 1;
    let mut store = Store::create(&config).context("creating the store")?;
    let ctx = Context::new("bench");

    let mut rng = Rng::new(seed);
    let mut names = std::collections::BTreeSet::new();
    while names.len() < per_case * Case::ALL.len() {
        names.insert(format!("t{:010x}", rng.next_u64() & 0xff_ffff_ffff));
    }
    let mut names: Vec<String> = names.into_iter().collect();
    rng.shuffle(&mut names);
    let mut targets: Vec<Target> = names
        .into_iter()
        .enumerate()
        .map(|(i, user)| Target {
            case: Case::ALL[i % Case::ALL.len()],
            user,
            code: String::new(),
        })
        .collect();

    let req = CodeRequest {
        count: 1,
        reuse_count: 0,
        valid_secs: 0,
        ..CodeRequest::default()
    };
    for chunk in targets.chunks_mut(5_000) {
        store.batch(&ctx, |b| {
            for t in chunk.iter_mut() {
                if t.case == Case::Unknown {
                    continue;
                }
                let status = match t.case {
                    Case::Disabled => Status::Disabled,
                    Case::BypassDenied => Status::Bypass,
                    _ => Status::Active,
                };
                b.add_user(NewUser {
                    username: t.user.clone(),
                    status: Some(status),
                    ..NewUser::default()
                })?;
                if t.case != Case::NotEnrolled {
                    b.add_device(&t.user, DeviceKind::Phone, None)?;
                }
                let issued = b.generate_codes(&t.user, &req)?;
                if t.case == Case::Valid {
                    t.code = issued
                        .codes
                        .first()
                        .map(|c| c.code.expose().to_owned())
                        .unwrap_or_default();
                }
            }
            for t in chunk.iter().filter(|t| t.case == Case::LockedOut) {
                let v = b.verify(&t.user, "000000000")?;
                if v.decision != Decision::Reject(Reason::WrongCode) || !v.locked_now {
                    return Err(sparekey::Error::Store(format!(
                        "user {} was not locked out by a wrong code",
                        t.user
                    )));
                }
            }
            Ok(())
        })?;
    }

    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("timing-users.csv"))?
    };
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "case,user,code")?;
    for t in &targets {
        writeln!(out, "{},{},{}", t.case.as_str(), t.user, t.code)?;
    }
    out.flush()?;
    Ok(targets)
}

/// Reads `case,user,code` lines as [`setup`] writes them.
pub fn read_targets(path: &Path) -> anyhow::Result<Vec<Target>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let mut f = line.splitn(3, ',');
        let (Some(case), Some(user), Some(code)) = (f.next(), f.next(), f.next()) else {
            bail!("{}:{}: expected case,user,code", path.display(), n + 1);
        };
        let Some(case) = Case::parse(case) else {
            bail!("{}:{}: unknown case", path.display(), n + 1);
        };
        out.push(Target {
            case,
            user: user.to_owned(),
            code: code.to_owned(),
        });
    }
    Ok(out)
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct TimingConfig {
    /// The server.
    pub server: SocketAddr,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// The accounts, by case.
    pub targets: Vec<Target>,
    /// The cases to send (each needs at least one target).
    pub cases: Vec<Case>,
    /// Measured requests per case.
    pub samples: usize,
    /// Requests sent first and not measured (caches, the server's first batches).
    pub warmup: usize,
    /// How long to wait for an answer; a request not answered by then is counted lost.
    pub timeout: Duration,
    /// Seed for the schedule, codes and authenticators.
    pub seed: u64,
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Per case, the time from send to answer of each measured request, in nanoseconds.
    pub by_case: Vec<(Case, Vec<u64>)>,
    /// Requests not answered in time.
    pub lost: u64,
    /// Answers other than the case expects, or that failed the reply checks.
    pub unexpected: u64,
    /// The most requests any one user of a case was sent.
    pub max_per_user: usize,
}

impl Samples {
    /// The samples of one case.
    pub fn of(&self, case: Case) -> &[u64] {
        self.by_case
            .iter()
            .find(|(c, _)| *c == case)
            .map_or(&[][..], |(_, v)| v.as_slice())
    }
}

/// A code of nine digits that is not `valid` (it differs in the first digit).
fn wrong_code(rng: &mut Rng, valid: &str) -> String {
    let first = valid.as_bytes().first().map_or(0, |b| b.wrapping_sub(b'0'));
    let mut d = (rng.next_u64() % 10) as u8;
    if d == first {
        d = (d + 1) % 10;
    }
    format!("{d}{:08}", rng.next_u64() % 100_000_000)
}

/// Sends `cfg.warmup` then `cfg.samples * cfg.cases.len()` requests, one at a time, and
/// times each.
pub fn run(cfg: &TimingConfig) -> anyhow::Result<Samples> {
    let mut rng = Rng::new(cfg.seed);
    // Each case's users, shuffled, visited in turn: attempts spread evenly over users.
    let mut pools: Vec<Vec<&Target>> = Vec::new();
    for case in &cfg.cases {
        let mut pool: Vec<&Target> = cfg.targets.iter().filter(|t| t.case == *case).collect();
        if pool.is_empty() {
            bail!("no users for case {}", case.as_str());
        }
        rng.shuffle(&mut pool);
        pools.push(pool);
    }
    let mut schedule: Vec<usize> = (0..cfg.cases.len())
        .flat_map(|k| std::iter::repeat_n(k, cfg.samples))
        .collect();
    rng.shuffle(&mut schedule);
    let warmup: Vec<usize> = (0..cfg.warmup)
        .map(|_| rng.below(cfg.cases.len()))
        .collect();

    let sock = UdpSocket::bind(if cfg.server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    })?;
    sock.connect(cfg.server)?;
    sock.set_read_timeout(Some(cfg.timeout))?;

    let mut out = Samples {
        by_case: cfg
            .cases
            .iter()
            .map(|c| (*c, Vec::with_capacity(cfg.samples)))
            .collect(),
        ..Samples::default()
    };
    let mut next_user = vec![0usize; cfg.cases.len()];
    let mut sent_to = vec![0usize; cfg.cases.len()];
    let mut id = 0u8;
    let mut buf = [0u8; 4096];
    for (i, &k) in warmup.iter().chain(schedule.iter()).enumerate() {
        let case = cfg.cases[k];
        let pool = &pools[k];
        let target = pool[next_user[k] % pool.len()];
        next_user[k] += 1;
        sent_to[k] += 1;
        let code = if case == Case::Valid {
            target.code.clone()
        } else {
            wrong_code(&mut rng, &target.code)
        };
        let mut auth = [0u8; 16];
        auth[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        auth[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        id = id.wrapping_add(1);
        let request = client::pap(id, auth, &target.user, &code, &cfg.secret);

        let started = Instant::now();
        sock.send(&request)?;
        let deadline = started + cfg.timeout;
        // Read until this request's answer; a late answer to an earlier (lost) request
        // has another identifier and is skipped.
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut buf) {
                Ok(n) if n >= 2 && buf[1] == id => break Some((started.elapsed(), n)),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let Some((elapsed, n)) = answer else {
            out.lost += 1;
            continue;
        };
        match client::check_reply_with(&buf[..n], &request, &cfg.secret, true) {
            Ok(got) if got == case.expect() => {}
            _ => {
                out.unexpected += 1;
                continue;
            }
        }
        if i >= cfg.warmup {
            out.by_case[k].1.push(elapsed.as_nanos() as u64);
        }
    }
    out.max_per_user = pools
        .iter()
        .zip(&sent_to)
        .map(|(p, s)| s.div_ceil(p.len()))
        .max()
        .unwrap_or(0);
    Ok(out)
}

/// The `q` quantile (0..=1) of sorted samples (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn p_value(p: f64) -> String {
    if p < 1e-300 {
        "<1e-300".into()
    } else if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// Markdown tables: each case's distribution (µs), then a KS and a Mann–Whitney test for
/// every pair of reject cases, and valid against wrong code as a control (a test that
/// cannot tell those apart has no power).
pub fn report(s: &Samples) -> String {
    let mut out = String::new();
    out.push_str("| case | n | min | p10 | p50 | p90 | p99 | mean |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (case, v) in &s.by_case {
        let mut v = v.clone();
        v.sort_unstable();
        let mean = if v.is_empty() {
            0
        } else {
            (v.iter().map(|&x| u128::from(x)).sum::<u128>() / v.len() as u128) as u64
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            case.as_str(),
            v.len(),
            us(v.first().copied().unwrap_or(0)),
            us(quantile(&v, 0.10)),
            us(quantile(&v, 0.50)),
            us(quantile(&v, 0.90)),
            us(quantile(&v, 0.99)),
            us(mean),
        ));
    }
    out.push('\n');
    out.push_str(
        "| pair | Δp50 µs | KS D | KS p | MW P(A>B) | MW z | MW p |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let rejects: Vec<Case> = s
        .by_case
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| *c != Case::Valid)
        .collect();
    let mut pairs = Vec::new();
    for (i, a) in rejects.iter().enumerate() {
        for b in &rejects[i + 1..] {
            pairs.push((*a, *b));
        }
    }
    if s.by_case.iter().any(|(c, _)| *c == Case::Valid) && rejects.contains(&Case::WrongCode) {
        pairs.push((Case::Valid, Case::WrongCode));
    }
    for (a, b) in pairs {
        let (x, y) = (s.of(a), s.of(b));
        if x.is_empty() || y.is_empty() {
            continue;
        }
        let ks = stats::ks_two_sample(x, y);
        let mw = stats::mann_whitney(x, y);
        let mut xs = x.to_vec();
        let mut ys = y.to_vec();
        xs.sort_unstable();
        ys.sort_unstable();
        let d50 = quantile(&xs, 0.5) as f64 - quantile(&ys, 0.5) as f64;
        out.push_str(&format!(
            "| {} vs {} | {:+.1} | {:.4} | {} | {:.3} | {:+.2} | {} |\n",
            a.as_str(),
            b.as_str(),
            d50 / 1000.0,
            ks.d,
            p_value(ks.p),
            mw.auc,
            mw.z,
            p_value(mw.p),
        ));
    }
    out.push_str(&format!(
        "\nlost {}  unexpected {}  at most {} requests per user\n",
        s.lost, s.unexpected, s.max_per_user
    ));
    out
}

/// Counts the audited reasons of `radius:*` auth events in the store, by reason: after a
/// run, each case's requests must have been recorded under its true reason.
pub fn audit_reasons(config: &Config) -> anyhow::Result<Vec<(String, u64)>> {
    let mut store = Store::open(config)?;
    let events = store.audit(&sparekey::AuditFilter::default())?;
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for e in events
        .iter()
        .filter(|e| e.action == "auth" && e.actor.starts_with("radius:"))
    {
        let key = e.reason.clone().unwrap_or_else(|| e.outcome.clone());
        *counts.entry(key).or_default() += 1;
    }
    Ok(counts.into_iter().collect())
}

/// Two-sample tests, written out: Kolmogorov–Smirnov with its asymptotic p-value, and
/// Mann–Whitney U with mid-ranks for ties and the normal approximation.
pub mod stats {
    /// A Kolmogorov–Smirnov result.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Ks {
        /// The largest distance between the two empirical distribution functions.
        pub d: f64,
        /// The asymptotic two-sided p-value.
        pub p: f64,
    }

    /// The two-sample KS statistic of `a` and `b` and its p-value (Kolmogorov's limit with
    /// Stephens' small-sample correction of the argument).
    pub fn ks_two_sample(a: &[u64], b: &[u64]) -> Ks {
        let mut a = a.to_vec();
        let mut b = b.to_vec();
        a.sort_unstable();
        b.sort_unstable();
        let (n, m) = (a.len(), b.len());
        if n == 0 || m == 0 {
            return Ks { d: 0.0, p: 1.0 };
        }
        let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
        while i < n && j < m {
            // Step past every sample equal to the smaller value, in both, so ties move
            // the two functions together.
            let v = a[i].min(b[j]);
            while i < n && a[i] == v {
                i += 1;
            }
            while j < m && b[j] == v {
                j += 1;
            }
            d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
        }
        let ne = (n * m) as f64 / (n + m) as f64;
        let sq = ne.sqrt();
        let lambda = (sq + 0.12 + 0.11 / sq) * d;
        Ks {
            d,
            p: kolmogorov_q(lambda),
        }
    }

    /// P(K > λ) for the Kolmogorov distribution: 2 Σ (-1)^(k-1) exp(-2 k² λ²).
    pub fn kolmogorov_q(lambda: f64) -> f64 {
        if lambda < 0.2 {
            return 1.0;
        }
        let mut sum = 0.0;
        let mut sign = 1.0;
        for k in 1..=200 {
            let kf = f64::from(k);
            let term = sign * (-2.0 * kf * kf * lambda * lambda).exp();
            sum += term;
            if term.abs() < 1e-300 || term.abs() <= 1e-12 * sum.abs() {
                break;
            }
            sign = -sign;
        }
        (2.0 * sum).clamp(0.0, 1.0)
    }

    /// A Mann–Whitney U result, for sample A against sample B.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct MannWhitney {
        /// U of sample A: pairs (a, b) with a > b, plus half the ties.
        pub u: f64,
        /// U / (n·m): the probability that a draw from A exceeds one from B (0.5: neither).
        pub auc: f64,
        /// The standardised U (tie-corrected variance, continuity correction).
        pub z: f64,
        /// The two-sided p-value from the normal approximation.
        pub p: f64,
    }

    /// The Mann–Whitney U test of `a` against `b`.
    pub fn mann_whitney(a: &[u64], b: &[u64]) -> MannWhitney {
        let (n, m) = (a.len(), b.len());
        if n == 0 || m == 0 {
            return MannWhitney {
                u: 0.0,
                auc: 0.5,
                z: 0.0,
                p: 1.0,
            };
        }
        let mut all: Vec<(u64, bool)> = a
            .iter()
            .map(|&x| (x, true))
            .chain(b.iter().map(|&y| (y, false)))
            .collect();
        all.sort_unstable_by_key(|&(v, _)| v);
        let total = all.len();
        let mut rank_sum_a = 0f64;
        let mut ties = 0f64;
        let mut i = 0;
        while i < total {
            let mut j = i;
            while j < total && all[j].0 == all[i].0 {
                j += 1;
            }
            // Ranks i+1 ..= j share their mean.
            let mid = (i + 1 + j) as f64 / 2.0;
            let in_a = all[i..j].iter().filter(|x| x.1).count();
            rank_sum_a += mid * in_a as f64;
            let t = (j - i) as f64;
            ties += t * t * t - t;
            i = j;
        }
        let (nf, mf, tf) = (n as f64, m as f64, total as f64);
        let u = rank_sum_a - nf * (nf + 1.0) / 2.0;
        let mean = nf * mf / 2.0;
        let var = nf * mf / 12.0 * ((tf + 1.0) - ties / (tf * (tf - 1.0)).max(1.0));
        let diff = u - mean;
        let z = if var > 0.0 {
            (diff - 0.5 * diff.signum()) / var.sqrt()
        } else {
            0.0
        };
        MannWhitney {
            u,
            auc: u / (nf * mf),
            z,
            p: erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0),
        }
    }

    /// The complementary error function (Chebyshev fit, relative error below 1.2e-7
    /// everywhere; Press et al., Numerical Recipes, `erfcc`).
    pub fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = -z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        let r = t * poly.exp();
        if x >= 0.0 { r } else { 2.0 - r }
    }
}

#[cfg(test)]
mod tests {
    use super::stats::*;
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!(close(erfc(0.0), 1.0, 1e-7));
        assert!(close(erfc(1.0), 0.157_299_207, 1e-7));
        assert!(close(erfc(2.0), 0.004_677_735, 1e-8));
        assert!(close(erfc(-1.0), 1.842_700_793, 1e-7));
    }

    #[test]
    fn kolmogorov_tail_matches_known_values() {
        // The classic critical values: P(K > 1.3581) = 0.05, P(K > 1.6276) = 0.01.
        assert!(close(kolmogorov_q(1.3581), 0.05, 1e-4));
        assert!(close(kolmogorov_q(1.6276), 0.01, 1e-4));
        assert_eq!(kolmogorov_q(0.0), 1.0);
    }

    #[test]
    fn identical_samples_are_not_told_apart() {
        let a: Vec<u64> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let ks = ks_two_sample(&a, &a);
        assert_eq!(ks.d, 0.0);
        assert_eq!(ks.p, 1.0);
        let mw = mann_whitney(&a, &a);
        assert!(close(mw.auc, 0.5, 1e-12));
        assert!(mw.p > 0.99);
    }

    #[test]
    fn disjoint_samples_are_told_apart() {
        let a: Vec<u64> = (0..500).collect();
        let b: Vec<u64> = (1000..1500).collect();
        let ks = ks_two_sample(&a, &b);
        assert_eq!(ks.d, 1.0);
        assert!(ks.p < 1e-100);
        let mw = mann_whitney(&b, &a);
        assert_eq!(mw.u, 250_000.0);
        assert_eq!(mw.auc, 1.0);
        assert!(mw.z > 20.0 && mw.p < 1e-100);
    }

    #[test]
    fn small_samples_match_hand_computed_statistics() {
        // a = 1 2 3 4, b = 3 5 6: the ECDFs differ most after 4 (1 vs 1/3).
        let a = [1, 2, 3, 4];
        let b = [3, 5, 6];
        let ks = ks_two_sample(&a, &b);
        assert!(close(ks.d, 2.0 / 3.0, 1e-12));
        // U of a: pairs with a > b (4 > 3) plus half the ties (3 = 3): 1.5 of 12 pairs.
        let mw = mann_whitney(&a, &b);
        assert!(close(mw.u, 1.5, 1e-12));
        let mw = mann_whitney(&b, &a);
        assert!(close(mw.u, 10.5, 1e-12));
    }

    #[test]
    fn a_small_shift_in_many_samples_is_detected() {
        // Two pseudo-random samples, one shifted by a tenth of its spread.
        let mut rng = Rng::new(3);
        let a: Vec<u64> = (0..20_000)
            .map(|_| 1_000 + rng.next_u64() % 1_000)
            .collect();
        let b: Vec<u64> = (0..20_000)
            .map(|_| 1_100 + rng.next_u64() % 1_000)
            .collect();
        assert!(ks_two_sample(&a, &b).p < 1e-6);
        assert!(mann_whitney(&a, &b).p < 1e-6);
        let c: Vec<u64> = (0..20_000)
            .map(|_| 1_000 + rng.next_u64() % 1_000)
            .collect();
        assert!(ks_two_sample(&a, &c).p > 1e-3);
    }

    #[test]
    fn wrong_codes_are_never_the_valid_one() {
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            let c = wrong_code(&mut rng, "512345678");
            assert_eq!(c.len(), 9);
            assert_ne!(c.as_bytes()[0], b'5');
        }
    }

    #[test]
    fn cases_round_trip_through_their_names() {
        for c in Case::ALL {
            assert_eq!(Case::parse(c.as_str()), Some(c));
        }
        assert_eq!(Case::parse("nobody"), None);
    }
}
