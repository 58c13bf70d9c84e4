//! The command line (DESIGN.md section 6) and the wiring from flags to the reactor.
//! Exit codes: 0 success, 2 bad usage, 1 anything else, with a one-line reason on stderr.

use crate::bench;
use crate::check::{self, ClientLog, Expect};
use crate::client::policy::{splitmix64, Policy};
use crate::client::{Client, ClientConfig};
use crate::node::{NodeConfig, StartRole};
use crate::proto::limits::{LEAVE_WAIT_MS, MAX_CLIENT_ID_LEN, MAX_OPEN_BALLOTS};
use crate::proto::{ClientId, NodeId, RemoveReply, Seq};
use crate::reactor::client::{open_log, ClientHost, Ended, Hosted, REDIAL};
use crate::reactor::promise::PromiseFile;
use crate::reactor::spawn::SpawnSpec;
use crate::reactor::{server, status};
use crate::sim;
use crate::watch::{Watch, MIN_WATCH_INTERVAL_MS};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};
use structopt::StructOpt;

#[derive(Debug, StructOpt)]
#[structopt(name = "pbvote", about = "A primary-backup poll collection service")]
pub enum Command {
    /// Run a server replica (primary or backup: one binary, a role switch).
    Server(ServerArgs),
    /// Run a voting client that logs every result exactly once.
    Client(ClientArgs),
    /// Ask a server for its role, view, ballots, clients and peer health.
    Status(StatusArgs),
    /// Take a client that is gone for good out of the membership (ask either server).
    RemoveClient(RemoveArgs),
    /// Check client logs for G1 (exactly once), G2 (agreement) and G3 (every vote counted).
    CheckLogs(CheckArgs),
    /// Run the deterministic simulator over many seeds, or replay one.
    Sim(SimArgs),
    /// Measure: a real primary and backup on loopback, N clients on this process's loop.
    Bench(BenchArgs),
    /// Print the pbvote frames in a packet capture (pcap or pcapng), one line each.
    Decode(DecodeArgs),
    /// Print a completion script for a shell: bash, zsh, fish, powershell or elvish
    /// (e.g. `pbvote completions bash > /etc/bash_completion.d/pbvote`).
    Completions(CompletionsArgs),
    /// Internal to `bench`: hosts a share of its clients when one process may not open
    /// enough descriptors for all of them.
    #[structopt(setting(structopt::clap::AppSettings::Hidden))]
    BenchWorker(BenchWorkerArgs),
}

#[derive(Debug, StructOpt)]
pub struct DecodeArgs {
    /// The capture: `tcpdump -i lo -w FILE` (pcap) or `tshark -w FILE` (pcapng).
    #[structopt(parse(from_os_str))]
    pub file: PathBuf,
    /// Only connections with an end on this port (repeatable; default: every TCP
    /// connection in the capture).
    #[structopt(long = "port", number_of_values = 1)]
    pub ports: Vec<u16>,
    /// One JSON object per frame instead of text.
    #[structopt(long)]
    pub json: bool,
}

#[derive(Debug, StructOpt)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, powershell or elvish.
    #[structopt(possible_values = &structopt::clap::Shell::variants())]
    pub shell: structopt::clap::Shell,
}

#[derive(Debug, StructOpt)]
pub struct BenchWorkerArgs {
    #[structopt(long, use_delimiter = true)]
    pub servers: Vec<SocketAddr>,
    #[structopt(long, parse(from_os_str))]
    pub dir: std::path::PathBuf,
    #[structopt(long)]
    pub first: usize,
    #[structopt(long)]
    pub count: usize,
    #[structopt(long)]
    pub until: Option<u64>,
}

#[derive(Debug, StructOpt)]
pub struct BenchArgs {
    /// Clients, hosted on the bench's own event loop (and on worker processes beyond what
    /// one process may open descriptors for: 3 per client).
    #[structopt(long, default_value = "100")]
    pub clients: usize,
    /// Ballots open at once (1: strictly one at a time).
    #[structopt(long, default_value = "1")]
    pub window: u64,
    /// Measure for this long (seconds)...
    #[structopt(long)]
    pub duration: Option<f64>,
    /// ...or until every client logged this many ballots.
    #[structopt(long)]
    pub ballots: Option<u64>,
    #[structopt(long, default_value = "1000")]
    pub heartbeat_ms: u64,
    /// One JSON line instead of text.
    #[structopt(long)]
    pub json: bool,
    /// Host at most this many clients per process (default: what the descriptor limit
    /// allows, 3 per client); the rest go to worker processes.
    #[structopt(long)]
    pub clients_per_process: Option<usize>,
    /// After the measured interval (needs --duration), SIGKILL the primary and time the
    /// first result of the new view, then SIGKILL the spawned backup and time its respawn.
    #[structopt(long)]
    pub failover: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    Primary,
    Backup,
}

impl FromStr for RoleArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(RoleArg::Primary),
            "backup" => Ok(RoleArg::Backup),
            _ => Err(format!("role must be primary or backup, not {s:?}")),
        }
    }
}

#[derive(Debug, StructOpt)]
pub struct ServerArgs {
    /// primary or backup.
    #[structopt(long)]
    pub role: RoleArg,
    /// Address to serve clients and the peer on (port 0: any free port, logged at start).
    #[structopt(long)]
    pub listen: SocketAddr,
    /// Where this server, once primary, fork/execs a backup (port 0 allowed). Default: our
    /// own host, port 0.
    #[structopt(long)]
    pub backup_listen: Option<SocketAddr>,
    /// The primary to join (required with --role backup).
    #[structopt(long)]
    pub join: Option<SocketAddr>,
    #[structopt(long, default_value = "1000")]
    pub heartbeat_ms: u64,
    /// Missed heartbeats after which the peer counts as dead.
    #[structopt(long, default_value = "5")]
    pub miss_limit: u32,
    /// How long a new backup takes to start before it joins.
    #[structopt(long, default_value = "30000")]
    pub backup_start_delay_ms: u64,
    /// Least time between two ballot openings.
    #[structopt(long, default_value = "1000")]
    pub ballot_interval_ms: u64,
    /// Open ballots 1..N, then stop opening new ones (keep serving).
    #[structopt(long)]
    pub ballots: Option<u64>,
    /// Open ballot 1 only once this many clients registered.
    #[structopt(long, default_value = "1")]
    pub min_clients: usize,
    /// Most ballots open at once.
    #[structopt(long, default_value = "1")]
    pub window: u64,
    /// Do not spawn a backup at start (one started by hand with --join joins instead).
    #[structopt(long)]
    pub no_spawn: bool,
    /// Most connections held at once (clients, status and the peer). Past it a client's
    /// hello is answered `Refused` ("max-connections: ...") and closed; the peer link, a
    /// joining backup, status and remove-client are still let in. Default: the soft
    /// descriptor limit less 64. Passed on to spawned backups.
    #[structopt(long)]
    pub max_connections: Option<usize>,
    /// Remove a member that has been disconnected from the primary for this long, as
    /// `remove-client` would (default: never).
    #[structopt(long)]
    pub absent_after_ms: Option<u64>,
    /// Start spawned backups through this program: `PROGRAM LISTEN_ADDR PBVOTE ARGS...`,
    /// which must exec the rest (e.g. into the network namespace that owns LISTEN_ADDR;
    /// see scripts/netns-spawn.sh). Passed on to every spawned backup.
    #[structopt(long)]
    pub spawn_via: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[structopt(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, StructOpt)]
pub struct ClientArgs {
    /// This client's name (1 to 64 bytes).
    #[structopt(long)]
    pub id: String,
    /// Comma-separated server addresses to try first.
    #[structopt(long, use_delimiter = true, required = true)]
    pub servers: Vec<SocketAddr>,
    /// The log file: one `<seq> <yes> <no>` line per ballot.
    #[structopt(long)]
    pub log: PathBuf,
    /// yes, no or random.
    #[structopt(long, default_value = "random")]
    pub policy: String,
    /// Seed for --policy random (default: derived from --id).
    #[structopt(long)]
    pub seed: Option<u64>,
    /// Exit 0 once the log holds 1..N.
    #[structopt(long)]
    pub until: Option<u64>,
    #[structopt(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, StructOpt)]
pub struct StatusArgs {
    #[structopt(long)]
    pub server: SocketAddr,
    /// One JSON object instead of text (with --watch: one per line).
    #[structopt(long)]
    pub json: bool,
    /// Print one line per server every interval until interrupted, following the
    /// cluster across a failover (the servers the answers name are watched too).
    #[structopt(long)]
    pub watch: bool,
    /// With --watch: the interval (at least 100).
    #[structopt(long, default_value = "1000")]
    pub interval_ms: u64,
    /// With --watch: stop after this many rounds.
    #[structopt(long)]
    pub count: Option<u64>,
}

#[derive(Debug, StructOpt)]
pub struct RemoveArgs {
    /// A server of the cluster: the primary, or the backup (which names the primary).
    #[structopt(long)]
    pub server: SocketAddr,
    /// The client to remove.
    #[structopt(long)]
    pub id: String,
    /// One JSON object instead of text.
    #[structopt(long)]
    pub json: bool,
}

#[derive(Debug, StructOpt)]
pub struct CheckArgs {
    /// Every log must hold exactly 1..N.
    #[structopt(long)]
    pub ballots: Option<u64>,
    /// Voters per ballot, when not every voter's log is given.
    #[structopt(long)]
    pub voters: Option<u32>,
    /// FILE (as given among the logs, without =POLICY) is the log of a client that left
    /// the membership (`client-left`) or was removed: it may stop short of --ballots, but
    /// must still be 1..k and agree with the others. Repeat for each.
    #[structopt(long = "left", number_of_values = 1)]
    pub left: Vec<String>,
    /// FILE=POLICY for each client (POLICY: yes, no or random:SEED); a bare FILE checks
    /// totals only.
    #[structopt(required = true)]
    pub logs: Vec<String>,
}

#[derive(Debug, StructOpt)]
pub struct SimArgs {
    /// How many seeds to run.
    #[structopt(long, default_value = "1000")]
    pub seeds: u64,
    /// The first seed (seeds run first, first+1, ...).
    #[structopt(long, default_value = "1")]
    pub first_seed: u64,
    /// Replay exactly this seed, with the protocol's log lines on stderr.
    #[structopt(long)]
    pub seed: Option<u64>,
}

fn run_decode(args: DecodeArgs) -> Result<(), Failure> {
    let file = std::fs::File::open(&args.file)
        .map_err(|e| Failure::Runtime(format!("{}: {e}", args.file.display())))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_failed = None;
    let summary = crate::decode::decode(file, &args.ports, |line| {
        if write_failed.is_some() {
            return;
        }
        let written = if args.json {
            match serde_json::to_string(line) {
                Ok(json) => writeln!(out, "{json}"),
                Err(e) => writeln!(out, "{{\"error\":{:?}}}", e.to_string()),
            }
        } else {
            writeln!(out, "{line}")
        };
        write_failed = written.err();
    })
    .map_err(|e| Failure::Runtime(format!("{}: {e}", args.file.display())))?;
    if let Some(e) = write_failed.or_else(|| out.flush().err()) {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Failure::Runtime(format!("stdout: {e}")));
        }
        return Ok(());
    }
    eprintln!(
        "pbvote decode: {} packets, {} frames ({} undecodable), {} packets skipped (not TCP, or other ports)",
        summary.packets, summary.frames, summary.undecodable, summary.skipped
    );
    Ok(())
}

fn run_completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    Command::clap().gen_completions_to("pbvote", args.shell, &mut out);
    out.flush()
        .map_err(|e| Failure::Runtime(format!("completions: {e}")))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let command = match Command::from_iter_safe(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => match e.kind {
            structopt::clap::ErrorKind::HelpDisplayed
            | structopt::clap::ErrorKind::VersionDisplayed => {
                println!("{}", e.message);
                return 0;
            }
            _ => {
                eprintln!("{}", e.message);
                return 2;
            }
        },
    };
    let result = match command {
        Command::Server(args) => run_server(args),
        Command::Client(args) => run_client(args),
        Command::Status(args) => run_status(args),
        Command::RemoveClient(args) => run_remove(args),
        Command::CheckLogs(args) => run_check(args),
        Command::Sim(args) => run_sim(args),
        Command::Bench(args) => run_bench(args),
        Command::BenchWorker(args) => run_bench_worker(args),
        Command::Completions(args) => run_completions(args),
        Command::Decode(args) => run_decode(args),
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Usage(msg)) => {
            say_error(&msg);
            2
        }
        Err(Failure::Runtime(msg)) => {
            say_error(&msg);
            1
        }
    }
}

/// `pbvote: <msg>` on stderr in one `write`: a spawned backup shares its primary's stderr,
/// and `eprintln!` writes the pieces of a formatted line one by one, so the primary's log
/// lines could land inside it (seen in `scripts/soak.sh`: a respawned backup's bind error
/// around a `ballot-result` line).
fn say_error(msg: &str) {
    use std::io::Write;
    let line = format!("pbvote: {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

enum Failure {
    Usage(String),
    Runtime(String),
}

fn init_logging(level: &str, tag: String) -> Result<(), Failure> {
    let filter = log::LevelFilter::from_str(level).map_err(|_| {
        Failure::Usage(format!(
            "--log-level must be error, warn, info, debug or trace, not {level:?}"
        ))
    })?;
    let config = simplelog::ConfigBuilder::new()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        .set_time_format_rfc3339()
        .build();
    let _ = simplelog::WriteLogger::init(filter, config, Tagged::new(tag, std::io::stderr()));
    Ok(())
}

/// Puts `tag` at the start of every line and hands each line to stderr in one `write`, so
/// the logs of a primary, its spawned backup and clients sharing a terminal never
/// interleave mid-line.
struct Tagged<W: Write> {
    line: Vec<u8>,
    tag_len: usize,
    inner: W,
}

impl<W: Write> Tagged<W> {
    fn new(tag: String, inner: W) -> Self {
        let mut line = tag.into_bytes();
        line.push(b' ');
        Tagged {
            tag_len: line.len(),
            line,
            inner,
        }
    }
}

impl<W: Write> Write for Tagged<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                self.inner.write_all(&self.line)?;
                self.line.truncate(self.tag_len);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn fresh_node_id() -> NodeId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    NodeId(splitmix64(nanos ^ (u64::from(std::process::id()) << 32)))
}

fn run_server(args: ServerArgs) -> Result<(), Failure> {
    let start = match (args.role, args.join) {
        (RoleArg::Primary, None) => StartRole::Primary,
        (RoleArg::Primary, Some(_)) => {
            return Err(Failure::Usage("--join is for --role backup".into()));
        }
        (RoleArg::Backup, Some(join)) => StartRole::Backup { join },
        (RoleArg::Backup, None) => {
            return Err(Failure::Usage("--role backup needs --join ADDR".into()));
        }
    };
    let role_tag = match args.role {
        RoleArg::Primary => "primary",
        RoleArg::Backup => "backup",
    };
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
    let backup_start_delay = Duration::from_millis(args.backup_start_delay_ms);
    let ballot_interval = Duration::from_millis(args.ballot_interval_ms);
    let cfg = NodeConfig {
        node: fresh_node_id(),
        listen: args.listen,
        start,
        heartbeat,
        miss_limit: args.miss_limit,
        backup_start_delay,
        ballot_interval,
        ballots: args.ballots,
        min_clients: args.min_clients,
        window: args.window,
        spawn_backup: args.role == RoleArg::Primary && !args.no_spawn,
        absent_after: args.absent_after_ms.map(Duration::from_millis),
    };
    cfg.validate().map_err(|e| Failure::Usage(e.to_string()))?;
    init_logging(
        &args.log_level,
        format!("{role_tag}[{}]", std::process::id()),
    )?;
    let spawn = SpawnSpec {
        listen: args
            .backup_listen
            .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 0)),
        heartbeat,
        miss_limit: args.miss_limit,
        backup_start_delay,
        ballot_interval,
        ballots: args.ballots,
        window: args.window,
        min_clients: args.min_clients,
        absent_after_ms: args.absent_after_ms,
        max_connections: args.max_connections,
        log_level: args.log_level.clone(),
        via: args.spawn_via.clone(),
    };
    let max_connections = args
        .max_connections
        .unwrap_or_else(server::default_max_connections);
    if max_connections == 0 {
        return Err(Failure::Usage(
            "--max-connections must be at least 1".into(),
        ));
    }
    server::run(args.listen, cfg, spawn, max_connections)
        .map_err(|e| Failure::Runtime(format!("server on {}: {e}", args.listen)))
}

fn parse_policy(policy: &str, seed: Option<u64>, id: &str) -> Result<Policy, Failure> {
    match (policy, seed) {
        ("yes", None) => Ok(Policy::Yes),
        ("no", None) => Ok(Policy::No),
        ("random", seed) => Ok(Policy::Random {
            seed: seed.unwrap_or_else(|| Policy::seed_from_id(id)),
        }),
        ("yes" | "no", Some(_)) => Err(Failure::Usage("--seed goes with --policy random".into())),
        (other, _) => Err(Failure::Usage(format!(
            "--policy must be yes, no or random, not {other:?}"
        ))),
    }
}

fn run_client(args: ClientArgs) -> Result<(), Failure> {
    if args.id.is_empty()
        || args.id.len() > MAX_CLIENT_ID_LEN
        || args.id.contains(char::is_whitespace)
    {
        return Err(Failure::Usage(format!(
            "--id must be 1..={MAX_CLIENT_ID_LEN} bytes without spaces"
        )));
    }
    let policy = parse_policy(&args.policy, args.seed, &args.id)?;
    init_logging(&args.log_level, format!("client-{}", args.id))?;
    let (log, log_end) = open_log(&args.log).map_err(Failure::Runtime)?;
    let (promise, promised) = PromiseFile::open(&args.log).map_err(Failure::Runtime)?;
    log::info!(
        "client-start client={} policy={policy} last_seq={} servers={:?} promised_servers={:?}",
        args.id,
        log_end.last,
        args.servers,
        promised.servers
    );
    let cfg = ClientConfig {
        id: ClientId(args.id.clone()),
        servers: args.servers,
        policy,
        until: args.until.map(Seq),
        redial: REDIAL,
    };
    let core = Client::new(cfg, log_end, &promised, Instant::now());
    let mut host = ClientHost::new(vec![Hosted::new(core, log, promise)])
        .map_err(|e| Failure::Runtime(format!("client {}: {e}", args.id)))?;
    host.leave_when_done(Duration::from_millis(LEAVE_WAIT_MS));
    let ended = host
        .run(None)
        .map_err(|e| Failure::Runtime(format!("client {}: {e}", args.id)))?;
    let last = host.clients[0].core.last_logged();
    match ended {
        Ended::Done | Ended::Stopped | Ended::Deadline => {
            if host.all_done() {
                log::info!("client-done client={} last_seq={last}", args.id);
            }
            Ok(())
        }
        Ended::Refused(why) => Err(Failure::Runtime(format!(
            "client {}: refused (log at {last}): {why}",
            args.id
        ))),
        Ended::LeaveUnconfirmed => Err(Failure::Runtime(format!(
            "client {}: leaving was not agreed within {LEAVE_WAIT_MS} ms (log at {last}); \
             the servers may still count it as a voter (`pbvote remove-client --id {}` takes \
             it out), and its log may hold results no member has logged yet: keep it",
            args.id, args.id
        ))),
    }
}

/// How long `remove-client` waits for the removal to be agreed (a view change).
const REMOVE_WAIT: Duration = Duration::from_secs(30);

fn run_remove(args: RemoveArgs) -> Result<(), Failure> {
    if args.id.is_empty() || args.id.len() > MAX_CLIENT_ID_LEN {
        return Err(Failure::Usage(format!(
            "--id must be 1..={MAX_CLIENT_ID_LEN} bytes"
        )));
    }
    let id = ClientId(args.id.clone());
    let mut server = args.server;
    // The backup names the primary; one hop more is enough, two would be a loop.
    for _ in 0..2 {
        let reply = status::remove(server, &id, REMOVE_WAIT).map_err(Failure::Runtime)?;
        match reply {
            RemoveReply::Removed { view, unblocked } => {
                let seqs: Vec<u64> = unblocked.iter().map(|s| s.0).collect();
                if args.json {
                    let json = serde_json::json!({
                        "removed": args.id, "view": view.0, "server": server.to_string(),
                        "unblocked": seqs,
                    });
                    println!("{json}");
                } else {
                    println!(
                        "removed {} in view {view} (primary {server}); unblocked ballots: {}",
                        args.id,
                        if seqs.is_empty() {
                            "none".to_string()
                        } else {
                            seqs.iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    );
                }
                return Ok(());
            }
            RemoveReply::NoSuchClient => {
                return Err(Failure::Runtime(format!(
                    "{server}: no client {} ever registered",
                    args.id
                )))
            }
            RemoveReply::AskPrimary { primary: Some(p) } if p != server => server = p,
            RemoveReply::AskPrimary { .. } => break,
            RemoveReply::Recovering {
                view,
                present: _,
                members: 0,
            } => {
                return Err(Failure::Runtime(format!(
                    "{server}: recovering from a cold restart (view {view}), waiting for \
                     clients with history to report; the removal of {} is kept",
                    args.id
                )))
            }
            RemoveReply::Recovering {
                view,
                present,
                members,
            } => {
                return Err(Failure::Runtime(format!(
                    "{server}: recovering from a cold restart, waiting for the members of view \
                     {view} ({present} of {members} are back); it removes nobody before it \
                     knows the membership: start the missing clients"
                )))
            }
        }
    }
    Err(Failure::Runtime(format!(
        "no primary can be reached to remove {} (asked {server})",
        args.id
    )))
}

fn run_status(args: StatusArgs) -> Result<(), Failure> {
    if args.watch {
        return run_watch(&args);
    }
    let reply = status::query(args.server, Duration::from_secs(5)).map_err(Failure::Runtime)?;
    if args.json {
        let json = serde_json::to_string(&reply).map_err(|e| Failure::Runtime(e.to_string()))?;
        println!("{json}");
        return Ok(());
    }
    println!("node        {}", reply.node);
    println!("role        {}", reply.role);
    println!("view        {}", reply.view);
    println!("next_seq    {}", reply.next_seq);
    println!("committed   {}", reply.committed);
    println!("open        {}", reply.open_ballots);
    println!(
        "clients     {} registered, {} connected: {}",
        reply.clients.len(),
        reply.connected_clients,
        reply
            .clients
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let members: Vec<String> = (reply.members.iter())
        .map(|m| {
            let state = match (m.connected, m.absent_ms) {
                (true, _) => "connected".to_string(),
                (false, Some(ms)) => format!("absent {ms} ms"),
                (false, None) => "not connected".to_string(),
            };
            match m.voter_from {
                Some(seq) => format!("{} ({state}, voter from {seq})", m.id),
                None => format!("{} ({state})", m.id),
            }
        })
        .collect();
    println!(
        "members     {}: {}",
        reply.members.len(),
        members.join(", ")
    );
    if let Some(c) = reply.connections {
        println!(
            "connections {} open, at most {} (--max-connections), {} rejected",
            c.open, c.max, c.rejected
        );
    }
    if let Some(l) = reply.event_loop {
        println!(
            "loop        {} heartbeats sent, longest gap {} ms ({} since the last status), \
             longest turn {} ms ({})",
            l.heartbeats_sent,
            l.heartbeat_gap_max_ms,
            l.recent_heartbeat_gap_max_ms,
            l.turn_max_ms,
            l.recent_turn_max_ms
        );
    }
    match (reply.view.backup, &reply.peer) {
        (backup, Some(peer)) => println!(
            "backup      {}\npeer        addr={} connected={} alive={} last_heard_ms={}",
            backup.map_or("none".to_string(), |b| b.to_string()),
            peer.addr.map_or("none".to_string(), |a| a.to_string()),
            peer.connected,
            peer.alive,
            peer.last_heard_ms
                .map_or("never".to_string(), |m| m.to_string())
        ),
        (backup, None) => println!(
            "backup      {}\npeer        none",
            backup.map_or("none".to_string(), |b| b.to_string())
        ),
    }
    Ok(())
}

fn run_watch(args: &StatusArgs) -> Result<(), Failure> {
    if args.interval_ms < MIN_WATCH_INTERVAL_MS {
        return Err(Failure::Usage(format!(
            "--interval-ms must be at least {MIN_WATCH_INTERVAL_MS}"
        )));
    }
    let interval = Duration::from_millis(args.interval_ms);
    let mut watch = Watch::new(args.server, interval);
    let mut out = std::io::stdout().lock();
    let mut next = Instant::now();
    let mut rounds = 0;
    loop {
        for line in watch.round() {
            let text = if args.json {
                serde_json::to_string(&line).map_err(|e| Failure::Runtime(e.to_string()))?
            } else {
                line.to_string()
            };
            // A closed pipe (`| head`) ends the watch quietly.
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
        rounds += 1;
        if args.count.is_some_and(|count| rounds >= count) {
            return Ok(());
        }
        // Rounds keep to the interval however long the asking took.
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn run_check(args: CheckArgs) -> Result<(), Failure> {
    let mut logs = Vec::new();
    for spec in &args.logs {
        let (path, policy) = match spec.rsplit_once('=') {
            Some((path, policy)) => (
                path,
                Some(policy.parse::<Policy>().map_err(Failure::Usage)?),
            ),
            None => (spec.as_str(), None),
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| Failure::Runtime(format!("{path}: {e}")))?;
        logs.push(ClientLog::parse(path, &text, policy).map_err(Failure::Runtime)?);
    }
    if let Some(stray) = args
        .left
        .iter()
        .find(|l| logs.iter().all(|log| &log.name != *l))
    {
        return Err(Failure::Usage(format!(
            "--left {stray}: not one of the logs given"
        )));
    }
    let violations = check::check(
        &logs,
        &Expect {
            ballots: args.ballots,
            voters: args.voters,
            left: args.left.iter().cloned().collect(),
            ..Expect::default()
        },
    );
    for v in &violations {
        println!("{v}");
    }
    if violations.is_empty() {
        let lines = logs.iter().map(|l| l.lines.len()).max().unwrap_or(0);
        println!("ok: {} logs, {lines} ballots, G1 G2 G3 hold", logs.len());
        Ok(())
    } else {
        Err(Failure::Runtime(format!("{} violations", violations.len())))
    }
}

fn run_bench(args: BenchArgs) -> Result<(), Failure> {
    let duration = match (args.duration, args.ballots) {
        (Some(s), None) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        (None, Some(n)) if n > 0 => None,
        _ => {
            return Err(Failure::Usage(
                "give one of --duration SECONDS or --ballots K".into(),
            ))
        }
    };
    if args.failover && duration.is_none() {
        return Err(Failure::Usage("--failover needs --duration".into()));
    }
    if args.clients == 0 || args.window == 0 || args.window > MAX_OPEN_BALLOTS {
        return Err(Failure::Usage(format!(
            "--clients must be positive and --window 1..={MAX_OPEN_BALLOTS}"
        )));
    }
    init_logging("warn", "bench".to_string())?;
    let cfg = bench::BenchConfig {
        clients: args.clients,
        window: args.window,
        duration,
        ballots: args.ballots,
        heartbeat_ms: args.heartbeat_ms,
        json: args.json,
        failover: args.failover,
        clients_per_process: args.clients_per_process,
    };
    let report = bench::run(&cfg).map_err(Failure::Runtime)?;
    if args.json {
        let line = serde_json::to_string(&report).map_err(|e| Failure::Runtime(e.to_string()))?;
        println!("{line}");
    } else {
        bench::print_human(&report);
    }
    Ok(())
}

fn run_bench_worker(args: BenchWorkerArgs) -> Result<(), Failure> {
    let [p, b] = args.servers[..] else {
        return Err(Failure::Usage("--servers takes two addresses".into()));
    };
    init_logging("warn", format!("bench-worker-{}", args.first))?;
    bench::run_worker([p, b], &args.dir, args.first, args.count, args.until)
        .map_err(Failure::Runtime)
}

fn run_sim(args: SimArgs) -> Result<(), Failure> {
    if let Some(seed) = args.seed {
        init_logging("debug", format!("sim-{seed}"))?;
        return match sim::run_seed(seed) {
            Ok(report) => {
                println!("seed {seed}: ok ({report})");
                Ok(())
            }
            Err(failure) => Err(Failure::Runtime(failure.to_string())),
        };
    }
    let started = Instant::now();
    let summary = sim::run_seeds(args.first_seed, args.seeds);
    println!(
        "{} seeds from {} in {:.2}s: {}",
        args.seeds,
        args.first_seed,
        started.elapsed().as_secs_f64(),
        summary
    );
    match summary.first_failure {
        None => Ok(()),
        Some(failure) => Err(Failure::Runtime(format!(
            "{failure}; replay with: pbvote sim --seed {}",
            failure.seed
        ))),
    }
}
