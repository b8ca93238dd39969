//! Does the machine itself stop? One thread spins reading the clock and notes every gap
//! over 2 ms (time in which it was not running, though nothing in it waited); another,
//! optionally, appends 4 KiB to a file and `fdatasync`s it at a fixed rate, as a store's
//! log does. On a virtual machine whose host charges its I/O to the VM's CPU quota, the
//! gaps appear only with the syncs, and fall on the quota's period.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A gap shorter than this is ordinary scheduling.
const GAP: Duration = Duration::from_millis(2);
/// A sync slower than this is counted as slow.
const SLOW_SYNC: Duration = Duration::from_millis(2);
/// Bytes per write: a 4 KiB page and its header, as SQLite's log frames are.
const WRITE: usize = 4096 + 24;
/// The file is rewritten from the start past this length.
const FILE_LEN: u64 = 32 << 20;

/// What one run saw.
#[derive(Debug)]
pub struct Report {
    /// Start (since the run began) and length of each gap the spinner saw.
    pub gaps: Vec<(Duration, Duration)>,
    /// How many times the spinner read the clock.
    pub spins: u64,
    /// How long each sync took, in order.
    pub syncs: Vec<Duration>,
}

/// Spins for `seconds`; with `syncs_per_sec` above zero, writes and syncs a scratch file
/// in `dir` at that rate meanwhile (the file is removed afterwards).
pub fn run(seconds: f64, syncs_per_sec: f64, dir: &Path) -> anyhow::Result<Report> {
    let length = Duration::from_secs_f64(seconds);
    let stop = AtomicBool::new(false);
    let path = dir.join(format!("sparekey-pauses.{}", std::process::id()));
    let file = if syncs_per_sec > 0.0 {
        Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?,
        )
    } else {
        None
    };
    let start = Instant::now();
    let result = std::thread::scope(|s| {
        let syncer = file
            .as_ref()
            .map(|f| s.spawn(|| sync_loop(f, syncs_per_sec, &stop)));
        let (gaps, spins) = spin(start, length);
        stop.store(true, Ordering::SeqCst);
        let syncs = match syncer {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the sync thread panicked"))??,
            None => Vec::new(),
        };
        Ok(Report { gaps, spins, syncs })
    });
    if file.is_some() {
        std::fs::remove_file(&path)?;
    }
    result
}

fn spin(start: Instant, length: Duration) -> (Vec<(Duration, Duration)>, u64) {
    let mut gaps = Vec::new();
    let mut spins = 0u64;
    let mut last = start;
    loop {
        let now = Instant::now();
        spins += 1;
        let gap = now - last;
        if gap > GAP {
            gaps.push((last - start, gap));
        }
        last = now;
        if now - start >= length {
            return (gaps, spins);
        }
    }
}

fn sync_loop(file: &File, per_sec: f64, stop: &AtomicBool) -> anyhow::Result<Vec<Duration>> {
    let page = vec![0x5a_u8; WRITE];
    let step = Duration::from_secs_f64(1.0 / per_sec);
    let start = Instant::now();
    let mut syncs = Vec::new();
    let mut offset = 0u64;
    let mut n = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let due = start + step * n;
        n += 1;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        file.write_all_at(&page, offset)?;
        offset = (offset + WRITE as u64) % FILE_LEN;
        let t = Instant::now();
        file.sync_data()?;
        syncs.push(t.elapsed());
    }
    Ok(syncs)
}

impl Report {
    /// How many gaps begin within 5 ms of a whole number of `period`s after the first
    /// one: all of them, where a quota's period paces the pauses.
    pub fn on_period(&self, period: Duration) -> usize {
        let Some(&(first, _)) = self.gaps.first() else {
            return 0;
        };
        let p = period.as_secs_f64();
        self.gaps
            .iter()
            .filter(|(at, _)| {
                let phase = ((*at - first).as_secs_f64() / p).fract() * p;
                phase.min(p - phase) < 0.005
            })
            .count()
    }

    /// The lines `sparekey-bench pauses` prints.
    pub fn summary(&self) -> String {
        let total: Duration = self.gaps.iter().map(|(_, g)| *g).sum();
        let longest = self.gaps.iter().map(|(_, g)| *g).max().unwrap_or_default();
        let starts: Vec<String> = self
            .gaps
            .iter()
            .take(12)
            .map(|(at, _)| format!("{:.0}", at.as_secs_f64() * 1e3))
            .collect();
        let mut out = format!(
            "spinner: {} gaps over 2 ms, {:.1} ms in all, longest {:.1} ms; {} of them on a 100 ms period\n  first starts (ms): {}\n",
            self.gaps.len(),
            total.as_secs_f64() * 1e3,
            longest.as_secs_f64() * 1e3,
            self.on_period(Duration::from_millis(100)),
            starts.join(" ")
        );
        if !self.syncs.is_empty() {
            let mut d = self.syncs.clone();
            d.sort();
            let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
            let slow = d.iter().filter(|x| **x > SLOW_SYNC).count();
            out.push_str(&format!(
                "syncs: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms), {} over 2 ms\n",
                d.len(),
                at(0.5),
                at(0.99),
                at(1.0),
                slow
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_short_run_spins_syncs_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(0.2, 200.0, dir.path()).unwrap();
        assert!(r.spins > 1000, "the spinner ran {} times", r.spins);
        assert!(!r.syncs.is_empty(), "no sync ran");
        assert!(r.summary().contains("syncs: "));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn gaps_a_period_apart_are_counted_as_on_it() {
        let ms = Duration::from_millis;
        let gap = |at| (ms(at), ms(15));
        let r = Report {
            gaps: vec![gap(81), gap(181), gap(282), gap(481), gap(530)],
            spins: 0,
            syncs: Vec::new(),
        };
        assert_eq!(r.on_period(ms(100)), 4);
    }
}
