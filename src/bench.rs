//! `pbvote bench`: a real primary and its spawned backup as processes on loopback, and N
//! real client cores hosted on this process's own event loop, each with its own
//! connections and log file. Prints throughput, latency and the servers' footprint, then
//! checks every log with the one checker and fails loudly if any is not exact.

use crate::check::{self, ClientLog, Expect};
use crate::client::policy::Policy;
use crate::client::{Client, ClientConfig};
use crate::proto::types::mix64;
use crate::proto::{ClientId, Seq};
use crate::reactor::client::{open_log, BallotSeen, ClientHost, Hosted, Probe};
use crate::reactor::promise::PromiseFile;
use std::collections::HashMap;
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
    /// At most this many clients per process (default: the descriptor limit's share).
    pub clients_per_process: Option<usize>,
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
    /// CPU time the backup (the new primary) used from the SIGKILL to the first result of
    /// its view: the servers' side of a takeover.
    pub failover_server_cpu_ms: Option<f64>,
    /// CPU time the bench's client processes used meanwhile (their promises, accepts,
    /// redials): what a deployment spreads over one host per client.
    pub failover_clients_cpu_ms: Option<f64>,
    /// Processes hosting the clients: this one, plus workers when one process may not
    /// open enough descriptors.
    pub processes: usize,
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

/// The lowest port the bench tries for its servers: above the registered ports most
/// services listen on.
const SERVER_PORT_FLOOR: u16 = 10_000;

/// Not cryptographic: the clock's nanoseconds and the process id, mixed.
fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix64(nanos ^ (u64::from(std::process::id()) << 32))
}

/// Two free loopback ports for the primary and the backup, between [`SERVER_PORT_FLOOR`]
/// and the kernel's ephemeral range where it can: a port the OS hands out (bind to port
/// 0) is one a client's connection may take as its local port before the server binds it,
/// and at 10,000 clients one did (the backup's spawns all failed with "Address already in
/// use"). The first port tried is random, so that benches started together (the tests
/// run several at once) probe different ports.
fn server_ports() -> Result<(u16, u16), String> {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > SERVER_PORT_FLOOR + 2);
    let mut held = Vec::new();
    if let Some(low) = ephemeral_low {
        let span = low - SERVER_PORT_FLOOR;
        let start = (random_u64() % u64::from(span)) as u16;
        for i in 0..span {
            let port =
                SERVER_PORT_FLOOR + ((u32::from(start) + u32::from(i)) % u32::from(span)) as u16;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                held.push(listener);
            }
            if held.len() == 2 {
                break;
            }
        }
    }
    while held.len() < 2 {
        held.push(TcpListener::bind("127.0.0.1:0").map_err(|e| format!("probe a port: {e}"))?);
    }
    let port = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.port())
            .map_err(|e| format!("probe a port: {e}"))
    };
    Ok((port(&held[0])?, port(&held[1])?))
}

/// Processes started by the bench (the primary's group, client workers): killed and
/// reaped when the bench ends, however it ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(cfg: &BenchConfig) -> Result<BenchReport, String> {
    use std::os::unix::process::CommandExt;
    let per_process = clients_per_process()
        .min(cfg.clients_per_process.unwrap_or(usize::MAX))
        .max(1);
    let processes = cfg.clients.div_ceil(per_process);
    let chunk = cfg.clients.div_ceil(processes);
    raise_fd_limit(chunk);
    let dir = scratch_dir()?;
    let (p_port, b_port) = server_ports()?;
    let (p, b): (SocketAddr, SocketAddr) = (
        SocketAddr::from(([127, 0, 0, 1], p_port)),
        SocketAddr::from(([127, 0, 0, 1], b_port)),
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let err = fs::File::create(dir.join("servers.err")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&exe);
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

    // Descriptors are per process: clients beyond what one process may open are hosted
    // by worker processes, each its own event loop like this one.
    let mut workers = Workers(Vec::new());
    for first in (chunk..cfg.clients).step_by(chunk) {
        let count = chunk.min(cfg.clients - first);
        let err =
            fs::File::create(dir.join(format!("worker-{first}.err"))).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&exe);
        cmd.args(["bench-worker", "--servers", &format!("{p},{b}")])
            .arg("--dir")
            .arg(&dir)
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        if let Some(n) = cfg.ballots {
            cmd.args(["--until", &n.to_string()]);
        }
        workers.0.push(
            cmd.spawn()
                .map_err(|e| format!("start a bench worker: {e}"))?,
        );
    }
    let mut host = ClientHost::new(host_clients(&dir, 0..chunk, [p, b], cfg.ballots)?)
        .map_err(|e| format!("client host: {e}"))?;

    // With --duration, measure with the backup in service: every client, here and in the
    // workers, follows a view that has one (with 10,000 clients each view change costs
    // 20,000 fsyncs of promises, seconds of settling). With --ballots the count starts at
    // ballot 1, whatever serves it. And once ballots run: a fresh primary waits a peer
    // timeout before ballot 1 (a cold restart's clients say hello meanwhile).
    let warmup = Instant::now() + Duration::from_secs(60);
    let measurable = |host: &ClientHost| {
        host.all_paired() && host.all_logged() && workers_ready(&dir, workers.0.len())
    };
    while cfg.duration.is_some() && !measurable(&host) {
        if Instant::now() > warmup {
            return Err(format!(
                "the backup did not join within 60 s; see {}",
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
    let probe = host.probe.take().unwrap_or_default();
    // With --ballots the run ends when the last worker's clients are done too. The
    // workers' clients take part in a failover: they stop after it (what they saw after
    // `end` is left out).
    let mut others = Vec::new();
    if !cfg.failover {
        others = stop_workers(&mut workers, &dir, cfg.duration.is_some())?;
    }
    let end = Instant::now();
    let seconds = end.duration_since(start).as_secs_f64();

    let primary_pid = servers.primary.id();
    let backup = backup_pid(primary_pid);
    let report_base = (
        rss_kib(primary_pid),
        backup.map(rss_kib).unwrap_or(0),
        cpu_seconds(primary_pid) - cpu_before.0,
        backup.map(cpu_seconds).unwrap_or(0.0) - backup_cpu_before,
    );
    let failover_cost = if cfg.failover {
        let client_pids: Vec<u32> = std::iter::once(std::process::id())
            .chain(workers.0.iter().map(|w| w.id()))
            .collect();
        let cost = failover(&mut host, primary_pid, &client_pids)?;
        others = stop_workers(&mut workers, &dir, cfg.duration.is_some())?;
        Some(cost)
    } else {
        None
    };
    let anchor = (Instant::now(), monotonic_ns());
    let mut seen: Vec<Vec<Seen>> = vec![probe.done.iter().map(|b| Seen::of(b, anchor)).collect()];
    seen.extend(others);
    drop(host);
    drop(servers);

    let violations = check_logs(&dir, cfg.clients, cfg.ballots)?;
    for v in &violations {
        eprintln!("VIOLATION {v}");
    }
    let window_ns = (
        Seen::ns(start, anchor),
        Seen::ns(end, anchor).max(Seen::ns(start, anchor)),
    );
    let (ballots, votes, mut lat) = merge_seen(&seen, window_ns);
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    let report = BenchReport {
        clients: cfg.clients,
        window: cfg.window,
        seconds,
        ballots,
        votes,
        votes_per_s: votes as f64 / seconds,
        ballots_per_s: ballots as f64 / seconds,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        latency_max_ms: lat.last().map_or(0.0, |&ns| ns as f64 / 1e6),
        primary_rss_kib: report_base.0,
        backup_rss_kib: report_base.1,
        primary_cpu_s: report_base.2,
        backup_cpu_s: report_base.3,
        logs_exact: violations.is_empty(),
        failover_ms: failover_cost.map(|c| c.failover_ms),
        respawn_ms: failover_cost.map(|c| c.respawn_ms),
        failover_server_cpu_ms: failover_cost.map(|c| c.server_cpu_ms),
        failover_clients_cpu_ms: failover_cost.map(|c| c.clients_cpu_ms),
        processes,
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

/// The client cores `c{first}..c{first + count}`, each with its log in `dir`.
fn host_clients(
    dir: &Path,
    range: std::ops::Range<usize>,
    servers: [SocketAddr; 2],
    until: Option<u64>,
) -> Result<Vec<Hosted>, String> {
    let mut hosted = Vec::with_capacity(range.len());
    let now = Instant::now();
    for i in range {
        let path = dir.join(format!("c{i}.log"));
        let (log, log_end) = open_log(&path)?;
        let (promise, promised) = PromiseFile::open(&path)?;
        let core = Client::new(
            ClientConfig {
                id: ClientId(format!("c{i}")),
                servers: servers.to_vec(),
                policy: policy(i),
                until: until.map(Seq),
                redial: Duration::from_millis(200),
            },
            log_end,
            &promised,
            now,
        );
        hosted.push(Hosted::new(core, log, promise));
    }
    Ok(hosted)
}

/// `pbvote bench-worker`: hosts clients `first..first + count` for a bench that has more
/// clients than one process may hold descriptors for. Runs until SIGTERM (the bench's
/// --duration is over) or until every client logged `until`, then writes what it saw to
/// `<dir>/worker-<first>.seen` for the bench to merge.
pub fn run_worker(
    servers: [SocketAddr; 2],
    dir: &Path,
    first: usize,
    count: usize,
    until: Option<u64>,
) -> Result<(), String> {
    raise_fd_limit(count);
    let mut host = ClientHost::new(host_clients(dir, first..first + count, servers, until)?)
        .map_err(|e| format!("client host: {e}"))?;
    host.probe = Some(Probe::default());
    let mut ready = false;
    while !host.stopped() && !host.all_done() {
        host.run(Some(Instant::now() + Duration::from_millis(10)))
            .map_err(|e| e.to_string())?;
        if !ready && host.all_paired() {
            ready = true;
            let path = dir.join(format!("worker-{first}.ready"));
            fs::write(&path, "").map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let anchor = (Instant::now(), monotonic_ns());
    let mut text = String::new();
    for b in host.probe.take().unwrap_or_default().done {
        let seen = Seen::of(&b, anchor);
        text.push_str(&format!(
            "{} {} {} {}\n",
            seen.seq, seen.asked_ns, seen.done_ns, seen.votes
        ));
    }
    let path = dir.join(format!("worker-{first}.seen"));
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every worker said all its clients follow a view with a backup.
fn workers_ready(dir: &Path, workers: usize) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "ready"))
            .count()
            == workers
    })
}

/// One ballot as one process saw it, on the machine's monotonic clock (comparable across
/// processes, unlike `Instant`).
#[derive(Clone, Copy, Debug)]
struct Seen {
    seq: u64,
    /// 0: not seen asked.
    asked_ns: u64,
    done_ns: u64,
    votes: u64,
}

impl Seen {
    fn ns(t: Instant, anchor: (Instant, u64)) -> u64 {
        let ago = anchor.0.saturating_duration_since(t).as_nanos() as u64;
        anchor.1.saturating_sub(ago)
    }

    fn of(b: &BallotSeen, anchor: (Instant, u64)) -> Seen {
        Seen {
            seq: b.seq,
            asked_ns: b.asked.map_or(0, |t| Seen::ns(t, anchor)),
            done_ns: Seen::ns(b.done, anchor),
            votes: b.votes,
        }
    }

    fn parse(line: &str) -> Option<Seen> {
        let mut f = line.split(' ').map(|x| x.parse::<u64>().ok());
        Some(Seen {
            seq: f.next()??,
            asked_ns: f.next()??,
            done_ns: f.next()??,
            votes: f.next()??,
        })
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer to a local struct.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Ends the workers (SIGTERM with --duration; with --ballots they end by themselves) and
/// reads what each saw.
fn stop_workers(workers: &mut Workers, dir: &Path, signal: bool) -> Result<Vec<Vec<Seen>>, String> {
    let mut all = Vec::new();
    for child in &mut workers.0 {
        if signal {
            // SAFETY: kill(2) on a worker we started and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let status = child
            .wait()
            .map_err(|e| format!("wait for a worker: {e}"))?;
        if !status.success() {
            return Err(format!(
                "a bench worker failed ({status}); see {}/worker-*.err",
                dir.display()
            ));
        }
    }
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "seen") {
            let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            all.push(text.lines().filter_map(Seen::parse).collect());
        }
    }
    Ok(all)
}

/// Ballots every process saw complete within `window` (ns): how many, their votes, and
/// each one's latency (first asked anywhere to last logged anywhere).
fn merge_seen(per_process: &[Vec<Seen>], window: (u64, u64)) -> (u64, u64, Vec<u64>) {
    let mut by_seq: HashMap<u64, (usize, Seen)> = HashMap::new();
    for seen in per_process {
        for s in seen {
            let entry = by_seq.entry(s.seq).or_insert((0, *s));
            entry.0 += 1;
            let m = &mut entry.1;
            m.done_ns = m.done_ns.max(s.done_ns);
            if s.asked_ns != 0 {
                m.asked_ns = if m.asked_ns == 0 {
                    s.asked_ns
                } else {
                    m.asked_ns.min(s.asked_ns)
                };
            }
        }
    }
    let (mut ballots, mut votes, mut lat) = (0, 0, Vec::new());
    for (count, s) in by_seq.values() {
        if *count == per_process.len() && s.done_ns >= window.0 && s.done_ns <= window.1 {
            ballots += 1;
            votes += s.votes;
            if s.asked_ns != 0 {
                lat.push(s.done_ns.saturating_sub(s.asked_ns));
            }
        }
    }
    (ballots, votes, lat)
}

#[derive(Clone, Copy)]
struct FailoverCost {
    failover_ms: f64,
    respawn_ms: f64,
    server_cpu_ms: f64,
    clients_cpu_ms: f64,
}

/// Under load: SIGKILL the primary and time the first result of the new view, and the
/// CPU the new primary and the client processes (`clients`) spent until then; then
/// SIGKILL the new primary's spawned backup and time its replacement process.
fn failover(host: &mut ClientHost, primary: u32, clients: &[u32]) -> Result<FailoverCost, String> {
    let clients_cpu = || clients.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
    let turn = |host: &mut ClientHost, slice: Duration| {
        host.run(Some(Instant::now() + slice))
            .map_err(|e| e.to_string())
    };
    let old_view = host.clients[0].core.view().map_or(0, |v| v.number.0);
    let successor = backup_pid(primary).ok_or("the primary has no backup to fail over to")?;
    let probe = host.probe.get_or_insert_with(Probe::default);
    probe.views_above = Some(old_view);
    probe.first_result_above = None;
    let cpu_before = (cpu_seconds(successor), clients_cpu());
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
    let server_cpu_ms = (cpu_seconds(successor) - cpu_before.0) * 1000.0;
    let clients_cpu_ms = (clients_cpu() - cpu_before.1) * 1000.0;

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
    Ok(FailoverCost {
        failover_ms,
        respawn_ms: killed.elapsed().as_secs_f64() * 1000.0,
        server_cpu_ms,
        clients_cpu_ms,
    })
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
            ..Expect::default()
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

/// Descriptors a hosted client needs: its log and two sockets (primary and backup).
const FDS_PER_CLIENT: u64 = 3;
/// The loop's own (epoll, signal pipe, stdio) and room for the odd file.
const FDS_SPARE: u64 = 256;

/// The most clients one process can host under its hard descriptor limit.
fn clients_per_process() -> usize {
    let hard = crate::reactor::nofile_limit().map_or(1024, |(_, hard)| hard);
    // Root with CAP_SYS_RESOURCE may raise the hard limit; try before settling for it.
    let hard = if hard < 1 << 20 && can_raise_hard_limit() {
        1 << 20
    } else {
        hard
    };
    (hard.saturating_sub(FDS_SPARE) / FDS_PER_CLIENT).max(1) as usize
}

fn can_raise_hard_limit() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to local structs; the raise is
    // kept, which is what the bench wants anyway.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_cur,
            rlim_max: lim.rlim_max.max(1 << 20),
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0
    }
}

/// Raise the soft limit for `clients` hosted here (the servers, started by this process,
/// inherit it: they need about one descriptor per client).
fn raise_fd_limit(clients: usize) {
    let want = (clients as u64) * FDS_PER_CLIENT + FDS_SPARE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
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
        "clients {}  window {}  {:.2} s: {} ballots, {} votes{}",
        r.clients,
        r.window,
        r.seconds,
        r.ballots,
        r.votes,
        if r.processes > 1 {
            format!("  (clients hosted by {} processes)", r.processes)
        } else {
            String::new()
        }
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
    if let (Some(server), Some(clients)) = (r.failover_server_cpu_ms, r.failover_clients_cpu_ms) {
        let per = |ms: f64| ms * 1000.0 / r.clients as f64;
        println!(
            "failover cpu: the new primary {server:.0} ms ({:.1} us a client), the client processes {clients:.0} ms ({:.1} us a client)",
            per(server),
            per(clients)
        );
    }
}
