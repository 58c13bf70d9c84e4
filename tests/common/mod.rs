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
        Proc::start_with_stdout(dir, name, args, Stdio::null(), &[])
    }

    /// As `start`, with these variables added to its environment.
    pub fn start_with_env(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::start_with_stdout(dir, name, args, Stdio::null(), env)
    }

    /// As `start`, with its stdout in `<name>.out` beside the stderr file.
    pub fn start_keeping_stdout(dir: &Path, name: &str, args: &[&str]) -> (Proc, PathBuf) {
        let out = dir.join(format!("{name}.out"));
        let file = fs::File::create(&out).expect("create stdout file");
        (
            Proc::start_with_stdout(dir, name, args, file.into(), &[]),
            out,
        )
    }

    fn start_with_stdout(
        dir: &Path,
        name: &str,
        args: &[&str],
        stdout: Stdio,
        env: &[(&str, &str)],
    ) -> Proc {
        let stderr = dir.join(format!("{name}.err"));
        let file = fs::File::create(&stderr).expect("create stderr file");
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .envs(env.iter().copied())
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
                "no line with {needle:?} in {} within {timeout:?}; its events:\n{}",
                path.display(),
                events(path)
            );
        }
    }
}

/// The log without the per-ballot lines, for a failure report.
pub fn events(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("ballot-open") && !l.contains("ballot-result"))
        .collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
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

/// Starts a primary on a port the OS picks, with test timings (each overridable in
/// `extra`); returns it and its address.
pub fn start_primary(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let defaults = [
        ("--heartbeat-ms", "50"),
        ("--miss-limit", "5"),
        ("--backup-start-delay-ms", "200"),
        ("--ballot-interval-ms", "10"),
    ];
    let mut args = vec![
        "server",
        "--role",
        "primary",
        "--listen",
        "127.0.0.1:0",
        "--backup-listen",
        "127.0.0.1:0",
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
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
            ..Expect::default()
        },
    )
}

/// Sends `signal` to one process (not its group).
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (directly or through the primary).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The pid in the `role[pid]` tag of the last stderr line containing `needle`.
pub fn pid_of_line(path: &Path, needle: &str, timeout: Duration) -> i32 {
    wait_line(path, needle, timeout);
    let line = lines_with(path, needle).pop().expect("line");
    let tag = line.split_whitespace().next().expect("tag");
    let inner = tag.split('[').nth(1).and_then(|s| s.strip_suffix(']'));
    inner.and_then(|p| p.parse().ok()).expect("pid in tag")
}

/// Lines of `path` that contain `needle`.
pub fn lines_with(path: &Path, needle: &str) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Waits until `path` holds at least `count` lines containing `needle`.
pub fn wait_count(path: &Path, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while lines_with(path, needle).len() < count {
        if Instant::now() > deadline {
            panic!(
                "fewer than {count} lines with {needle:?} in {} within {timeout:?}; its events:\n{}",
                path.display(),
                events(path)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process still exists (not reaped, not a zombie).
pub fn alive(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit(')')
        .next()
        .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
}

/// Five clients, three voting yes and two no, as the issues' scenarios use.
pub fn three_yes_two_no() -> Vec<(&'static str, Policy)> {
    vec![
        ("y1", Policy::Yes),
        ("y2", Policy::Yes),
        ("y3", Policy::Yes),
        ("n1", Policy::No),
        ("n2", Policy::No),
    ]
}

/// Starts one client per entry, voting to `addr`, each running until `ballots`.
pub fn start_clients(
    dir: &Path,
    clients: &[(&str, Policy)],
    addr: &str,
    ballots: u64,
) -> Vec<Proc> {
    clients
        .iter()
        .map(|(id, p)| start_client(dir, id, addr, &p.to_string(), ballots))
        .collect()
}

/// Waits for every client to exit 0, then checks the logs hold exactly 1..=ballots.
pub fn finish_and_check(dir: &Path, procs: &mut [Proc], clients: &[(&str, Policy)], ballots: u64) {
    for p in procs.iter_mut() {
        let status = p.wait_exit(Duration::from_secs(120));
        assert!(status.success(), "{} exited {status}", p.name);
    }
    let violations = check_logs(dir, clients, ballots);
    assert!(
        violations.is_empty(),
        "{violations:#?}\nservers:\n{}",
        tail(&dir.join("primary.err"), 80)
    );
}

/// A loopback port free right now (bound and released), for tests that must restart a
/// server on the same address.
pub fn probe_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    listener.local_addr().expect("probe addr").port()
}

/// The usual scenario: a primary (which spawns its backup) with test timings, and the five
/// clients of [`three_yes_two_no`] voting until `ballots`. Every server logs to `err`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub primary: Proc,
    pub addr: String,
    pub clients: Vec<(&'static str, Policy)>,
    pub procs: Vec<Proc>,
    pub err: PathBuf,
    pub ballots: u64,
}

/// A scratch folder, removed at the end unless PBVOTE_KEEP_TEST_DIRS is set (then its path
/// is printed, to read the logs of a failure).
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("PBVOTE_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test dir kept: {}", dir.path().display());
    }
    dir
}

impl Cluster {
    /// `extra` flags go to the primary, after `--ballots N --min-clients 5`.
    pub fn start(ballots: u64, extra: &[&str]) -> Cluster {
        let dir = test_dir();
        let n = ballots.to_string();
        let mut args = vec!["--ballots", n.as_str(), "--min-clients", "5"];
        args.extend_from_slice(extra);
        let (primary, addr) = start_primary(dir.path(), &args);
        let clients = three_yes_two_no();
        let procs = start_clients(dir.path(), &clients, &addr, ballots);
        let err = dir.path().join("primary.err");
        Cluster {
            dir,
            primary,
            addr,
            clients,
            procs,
            err,
            ballots,
        }
    }

    pub fn finish_and_check(&mut self) {
        finish_and_check(
            self.dir.path(),
            &mut self.procs,
            &self.clients,
            self.ballots,
        );
    }

    /// With three yes and two no voters, every line is `k 3 2`.
    pub fn assert_every_log_is_3_yes_2_no(&self) {
        let expected: String = (1..=self.ballots).map(|k| format!("{k} 3 2\n")).collect();
        for (id, _) in &self.clients {
            let path = self.dir.path().join(format!("{id}.log"));
            let log = fs::read_to_string(path).expect("log");
            assert_eq!(log, expected, "log of {id}");
        }
    }
}

/// Runs `pbvote ARGS` to its end (a command that exits by itself).
pub fn pbvote(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run pbvote")
}
