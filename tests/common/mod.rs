//! Process-level test support: real `pbvote` processes on loopback, always reaped.
#![allow(dead_code)]

use pbvote::check::{self, ClientLog, Expect, Violation};
use pbvote::client::policy::Policy;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pbvote");

/// A process in its own process group. Dropping it SIGKILLs the whole group (so a backup
/// it spawned dies too) and reaps it, whether the test passed or panicked.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let stderr = dir.join(format!("{name}.err"));
        let file = fs::File::create(&stderr).expect("create stderr file");
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("spawn pbvote");
        Proc {
            name: name.to_string(),
            child,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}; its stderr:\n{}",
                    self.name,
                    tail(&self.stderr, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until its stderr has a line containing `needle`, and returns that line.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let slice =
                Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now()));
            if let Some(line) = try_wait_line(&self.stderr, needle, slice) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited {status} before logging {needle:?}:\n{}",
                    self.name,
                    tail(&self.stderr, 40)
                );
            }
            if Instant::now() >= deadline {
                return wait_line(&self.stderr, needle, Duration::ZERO);
            }
        }
    }

    pub fn kill_group(&mut self) {
        // SAFETY: kill(2) with a negative pid signals our child's process group only.
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Polls `path` until a line contains `needle`: the event a test awaits, with a bound.
pub fn try_wait_line(path: &Path, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Some(line.to_string());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn wait_line(path: &Path, needle: &str, timeout: Duration) -> String {
    match try_wait_line(path, needle, timeout) {
        Some(line) => line,
        None => {
            panic!(
                "no line with {needle:?} in {} within {timeout:?}; it ends:\n{}",
                path.display(),
                tail(path, 40)
            );
        }
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The address after `listening addr=` in a server's stderr.
pub fn listen_addr(proc: &mut Proc) -> String {
    let line = proc.wait_line("listening addr=", Duration::from_secs(10));
    line.rsplit("addr=")
        .next()
        .expect("addr")
        .trim()
        .to_string()
}

/// Starts a primary on a port the OS picks, with test timings; returns it and its address.
pub fn start_primary(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "server",
        "--role",
        "primary",
        "--listen",
        "127.0.0.1:0",
        "--backup-listen",
        "127.0.0.1:0",
        "--heartbeat-ms",
        "50",
        "--miss-limit",
        "5",
        "--backup-start-delay-ms",
        "200",
        "--ballot-interval-ms",
        "10",
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::start(dir, "primary", &args);
    let addr = listen_addr(&mut proc);
    (proc, addr)
}

pub fn start_client(dir: &Path, id: &str, servers: &str, policy: &str, until: u64) -> Proc {
    let log = dir.join(format!("{id}.log"));
    let until = until.to_string();
    Proc::start(
        dir,
        id,
        &[
            "client",
            "--id",
            id,
            "--servers",
            servers,
            "--log",
            log.to_str().expect("utf-8 path"),
            "--policy",
            policy,
            "--until",
            &until,
        ],
    )
}

/// Runs the one log checker over the logs of `clients` (id, policy).
pub fn check_logs(dir: &Path, clients: &[(&str, Policy)], ballots: u64) -> Vec<Violation> {
    let logs: Vec<ClientLog> = clients
        .iter()
        .map(|(id, policy)| {
            let path = dir.join(format!("{id}.log"));
            let text = fs::read_to_string(&path).unwrap_or_default();
            ClientLog::parse(id, &text, Some(*policy)).expect("log parses")
        })
        .collect();
    check::check(
        &logs,
        &Expect {
            ballots: Some(ballots),
            voters: None,
        },
    )
}
