//! `pbvote bench`: a real primary and its spawned backup as processes on loopback, and N
//! real client cores hosted on this process's own event loop, each with its own
//! connections and log file. Prints throughput, latency and the servers' footprint, then
//! checks every log with the one checker and fails loudly if any is not exact.

use crate::check::{self, ClientLog, Expect};
use crate::client::policy::Policy;
use crate::client::{Client, ClientConfig};
use crate::proto::{ClientId, Seq, View};
use crate::reactor::client::{open_log, ClientHost, Hosted, Probe};
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub clients: usize,
    pub window: u64,
    pub duration: Option<Duration>,
    pub ballots: Option<u64>,
    pub heartbeat_ms: u64,
    pub json: bool,
    /// After the measured interval, SIGKILL the primary, then the new primary's backup.
    pub failover: bool,
}

/// Every figure of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub clients: usize,
    pub window: u64,
    pub seconds: f64,
    pub ballots: u64,
    pub votes: u64,
    pub votes_per_s: f64,
    pub ballots_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub primary_rss_kib: u64,
    pub backup_rss_kib: u64,
    pub primary_cpu_s: f64,
    pub backup_cpu_s: f64,
    pub logs_exact: bool,
    /// SIGKILL of the primary to the first result of the new view at any client. A crash
    /// is detected by the closed connection, not by missed heartbeats, so this is all
    /// beyond detection.
    pub failover_ms: Option<f64>,
    /// SIGKILL of the (new) primary's spawned backup to its replacement process.
    pub respawn_ms: Option<f64>,
}

/// The server process group: killed and reaped when the bench ends, however it ends.
struct Servers {
    primary: Child,
}

impl Drop for Servers {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for the primary.
        unsafe {
            libc::kill(-(self.primary.id() as i32), libc::SIGKILL);
        }
        let _ = self.primary.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("probe a port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("probe a port: {e}"))
}

pub fn run(cfg: &BenchConfig) -> Result<BenchReport, String> {
    use std::os::unix::process::CommandExt;
    raise_fd_limit(cfg.clients);
    let dir = scratch_dir()?;
    let (p, b): (SocketAddr, SocketAddr) = (
        SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let err = fs::File::create(dir.join("servers.err")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--role", "primary"])
        .args([
            "--listen",
            &p.to_string(),
            "--backup-listen",
            &b.to_string(),
        ])
        .args(["--heartbeat-ms", &cfg.heartbeat_ms.to_string()])
        .args([
            "--backup-start-delay-ms",
            "100",
            "--ballot-interval-ms",
            "0",
        ])
        .args(["--window", &cfg.window.to_string()])
        .args(["--min-clients", &cfg.clients.to_string()])
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0);
    if let Some(n) = cfg.ballots {
        cmd.args(["--ballots", &n.to_string()]);
    }
    let servers = Servers {
        primary: cmd.spawn().map_err(|e| format!("start the primary: {e}"))?,
    };
    wait_listening(p, Duration::from_secs(10))?;

    let mut hosted = Vec::with_capacity(cfg.clients);
    let now = Instant::now();
    for i in 0..cfg.clients {
        let path = dir.join(format!("c{i}.log"));
        let (log, last, recent) = open_log(&path)?;
        let core = Client::new(
            ClientConfig {
                id: ClientId(format!("c{i}")),
                servers: vec![p, b],
                policy: policy(i),
                until: cfg.ballots.map(Seq),
                redial: Duration::from_millis(200),
            },
            last,
            &recent,
            View(0),
            now,
        );
        hosted.push(Hosted::new(core, log, &path));
    }
    let mut host = ClientHost::new(hosted).map_err(|e| format!("client host: {e}"))?;

    // With --duration, measure with the backup in service: every client follows a view
    // that has one. With --ballots the count starts at ballot 1, whatever serves it.
    let warmup = Instant::now() + Duration::from_secs(30);
    while cfg.duration.is_some()
        && !host
            .clients
            .iter()
            .all(|c| c.core.view().is_some_and(|v| v.backup.is_some()))
    {
        if Instant::now() > warmup {
            return Err(format!(
                "the backup did not join within 30 s; see {}",
                dir.join("servers.err").display()
            ));
        }
        host.run(Some(Instant::now() + Duration::from_millis(10)))
            .map_err(|e| e.to_string())?;
    }
    let cpu_before = (
        cpu_seconds(servers.primary.id()),
        backup_pid(servers.primary.id()),
    );
    let backup_cpu_before = cpu_before.1.map(cpu_seconds).unwrap_or(0.0);
    host.probe = Some(Probe::default());
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    host.run(deadline).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let probe = host.probe.take().unwrap_or_default();

    let primary_pid = servers.primary.id();
    let backup = backup_pid(primary_pid);
    let report_base = (
        rss_kib(primary_pid),
        backup.map(rss_kib).unwrap_or(0),
        cpu_seconds(primary_pid) - cpu_before.0,
        backup.map(cpu_seconds).unwrap_or(0.0) - backup_cpu_before,
    );
    let (failover_ms, respawn_ms) = if cfg.failover {
        let (f, r) = failover(&mut host, primary_pid)?;
        (Some(f), Some(r))
    } else {
        (None, None)
    };
    drop(host);
    drop(servers);

    let violations = check_logs(&dir, cfg.clients, cfg.ballots)?;
    for v in &violations {
        eprintln!("VIOLATION {v}");
    }
    let mut lat = probe.latencies.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let report = BenchReport {
        clients: cfg.clients,
        window: cfg.window,
        seconds,
        ballots: probe.ballots,
        votes: probe.votes,
        votes_per_s: probe.votes as f64 / seconds,
        ballots_per_s: probe.ballots as f64 / seconds,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        latency_max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        primary_rss_kib: report_base.0,
        backup_rss_kib: report_base.1,
        primary_cpu_s: report_base.2,
        backup_cpu_s: report_base.3,
        logs_exact: violations.is_empty(),
        failover_ms,
        respawn_ms,
    };
    if violations.is_empty() {
        let _ = fs::remove_dir_all(&dir);
        Ok(report)
    } else {
        Err(format!(
            "{} log violations (logs kept in {})",
            violations.len(),
            dir.display()
        ))
    }
}

/// Under load: SIGKILL the primary and time the first result of the new view; then
/// SIGKILL the new primary's spawned backup and time its replacement process.
fn failover(host: &mut ClientHost, primary: u32) -> Result<(f64, f64), String> {
    let turn = |host: &mut ClientHost, slice: Duration| {
        host.run(Some(Instant::now() + slice))
            .map_err(|e| e.to_string())
    };
    let old_view = host.clients[0].core.view().map_or(0, |v| v.number.0);
    let successor = backup_pid(primary).ok_or("the primary has no backup to fail over to")?;
    let probe = host.probe.get_or_insert_with(Probe::default);
    probe.views_above = Some(old_view);
    probe.first_result_above = None;
    let killed = Instant::now();
    // SAFETY: kill(2) on the primary we started.
    unsafe {
        libc::kill(primary as i32, libc::SIGKILL);
    }
    let deadline = killed + Duration::from_secs(10);
    let first = loop {
        turn(host, Duration::from_millis(1))?;
        if let Some(t) = host.probe.as_ref().and_then(|p| p.first_result_above) {
            break t;
        }
        if Instant::now() > deadline {
            return Err("no result from a new view within 10 s of killing the primary".into());
        }
    };
    let failover_ms = first.saturating_duration_since(killed).as_secs_f64() * 1000.0;

    // The new primary spawns a backup; once it is in service, kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let doomed = loop {
        turn(host, Duration::from_millis(5))?;
        let installed = host.clients.iter().all(|c| {
            c.core
                .view()
                .is_some_and(|v| v.number.0 > old_view && v.backup.is_some())
        });
        if let (true, Some(pid)) = (installed, backup_pid(successor)) {
            break pid;
        }
        if Instant::now() > deadline {
            return Err("the new primary's backup was not in service within 30 s".into());
        }
    };
    let killed = Instant::now();
    // SAFETY: kill(2) on a process of our own server group.
    unsafe {
        libc::kill(doomed as i32, libc::SIGKILL);
    }
    let deadline = killed + Duration::from_secs(10);
    loop {
        turn(host, Duration::from_micros(200))?;
        if backup_pid(successor).is_some_and(|pid| pid != doomed) {
            break;
        }
        if Instant::now() > deadline {
            return Err("no replacement backup within 10 s".into());
        }
    }
    Ok((failover_ms, killed.elapsed().as_secs_f64() * 1000.0))
}

/// Half the clients vote yes, half no, so every tally is known in advance.
fn policy(i: usize) -> Policy {
    if i % 2 == 0 {
        Policy::Yes
    } else {
        Policy::No
    }
}

fn check_logs(
    dir: &Path,
    clients: usize,
    ballots: Option<u64>,
) -> Result<Vec<check::Violation>, String> {
    let mut logs = Vec::with_capacity(clients);
    for i in 0..clients {
        let path = dir.join(format!("c{i}.log"));
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        logs.push(ClientLog::parse(&format!("c{i}"), &text, Some(policy(i)))?);
    }
    Ok(check::check(
        &logs,
        &Expect {
            ballots,
            voters: None,
        },
    ))
}

fn scratch_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("pbvote-bench-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("the primary is not listening on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Each client holds its log file and two sockets (primary and backup). Raise the soft
/// limit, and the hard one where we may (root); the servers inherit it.
fn raise_fd_limit(clients: usize) {
    let want = (clients as u64) * 3 + 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn proc_field(pid: u32, file: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

fn rss_kib(pid: u32) -> u64 {
    proc_field(pid, "status")
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    proc_field(pid, "stat")
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3; utime and stime are fields 14 and 15.
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}

/// The primary's spawned backup: its (only) child.
fn backup_pid(primary: u32) -> Option<u32> {
    proc_field(primary, &format!("task/{primary}/children"))
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
}

pub fn print_human(r: &BenchReport) {
    println!(
        "clients {}  window {}  {:.2} s: {} ballots, {} votes",
        r.clients, r.window, r.seconds, r.ballots, r.votes
    );
    println!(
        "votes/s {:.0}  ballots/s {:.0}  latency ms p50 {:.2} p99 {:.2} max {:.2}",
        r.votes_per_s, r.ballots_per_s, r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    println!(
        "primary rss {} KiB cpu {:.2} s  backup rss {} KiB cpu {:.2} s  logs exact: {}",
        r.primary_rss_kib, r.primary_cpu_s, r.backup_rss_kib, r.backup_cpu_s, r.logs_exact
    );
    if let (Some(f), Some(s)) = (r.failover_ms, r.respawn_ms) {
        println!(
            "failover: SIGKILL of the primary to the first result of the new view {f:.2} ms; \
             SIGKILL of the spawned backup to its respawn {s:.2} ms"
        );
    }
}
