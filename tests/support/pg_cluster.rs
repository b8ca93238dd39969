//! A throwaway PostgreSQL cluster for tests: `scripts/pg-test-cluster` in a temporary
//! directory on a loopback port, driven over its standard input. The script stops the
//! server and deletes the directory when that input ends, so a test process cannot leave
//! a server behind however it exits. Shared by the test binaries that need PostgreSQL
//! (`#[path]`-included), with std alone.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long the script may take to answer any command (initdb, start, stop).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
    control: Mutex<Control>,
    next_db: AtomicU32,
}

struct Control {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgCluster(127.0.0.1:{})", self.port)
    }
}

fn script() -> PathBuf {
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let s = d.join("scripts/pg-test-cluster");
        if s.exists() {
            return s;
        }
        dir = d.parent();
    }
    panic!(
        "scripts/pg-test-cluster not found above {}",
        env!("CARGO_MANIFEST_DIR")
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// A cluster of its own, for a test that stops and starts the server.
    pub fn start() -> PgCluster {
        let mut last = String::new();
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(script())
                .arg(port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("scripts/pg-test-cluster");
            let stdin = child.stdin.take();
            let out = child.stdout.take().unwrap();
            let (tx, lines) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut control = Control {
                child,
                stdin,
                lines,
            };
            let first = control.answer();
            if let Some(rest) = first.strip_prefix("ready ") {
                let (_, dir) = rest.split_once(' ').unwrap();
                return PgCluster {
                    port,
                    dir: PathBuf::from(dir),
                    control: Mutex::new(control),
                    next_db: AtomicU32::new(0),
                };
            }
            last = first;
            control.finish();
        }
        panic!(
            "no PostgreSQL test cluster: {last} (Debian package postgresql, see scripts/test-packages)"
        );
    }

    /// One cluster for the whole test binary, started on first use and stopped when the
    /// process exits (the script sees its input end).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    fn ask(&self, command: &str) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = c.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let answer = c.answer();
        assert_eq!(answer, "ok", "pg-test-cluster {command}");
    }

    /// A new, empty database; returns its name.
    pub fn create_db(&self) -> String {
        let name = format!(
            "sk_{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::SeqCst)
        );
        self.ask(&format!("createdb {name}"));
        name
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.ask("stop");
    }

    /// Starts the server again; returns once it accepts connections.
    pub fn start_again(&self) {
        self.ask("start");
    }

    /// The superuser's password file (mode 0600).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// The CA that signed the server's certificate, to trust as a root.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A URL for a database, with extra query parameters (`sslmode=...`) if any.
    pub fn url(&self, db: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("postgres://postgres@127.0.0.1:{}/{db}{q}", self.port)
    }

    /// `[store]` lines (without `key_file`) for a database.
    pub fn store_lines(&self, db: &str, query: &str) -> String {
        format!(
            "url = \"{}\"\npassword_file = \"{}\"\n",
            self.url(db, query),
            self.password_file().display()
        )
    }
}

impl Control {
    fn answer(&mut self) -> String {
        match self.lines.recv_timeout(ANSWER_WITHIN) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("pg-test-cluster did not answer in time"),
            Err(RecvTimeoutError::Disconnected) => "error pg-test-cluster exited".into(),
        }
    }

    /// Ends the script's input, so it stops the server and cleans up, and waits for it.
    fn finish(&mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + ANSWER_WITHIN;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.control
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
    }
}
