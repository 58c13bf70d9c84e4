//! The deterministic simulator: the real [`Node`] and [`Client`] cores on a simulated
//! network and clock, driven by one seed. Every link delivers in order (as TCP does) after
//! a random delay. Faults arrive at random: a server crashes (SIGKILL: its connections
//! close, its parent hears SIGCHLD) or pauses (SIGSTOP: it hears nothing and does nothing
//! until it resumes); a client crashes and restarts from its log. The model of the
//! assignment holds: the primary fails only while an installed backup is alive.
//!
//! After every step: G1-G3 on every log line appended, G4 (one primary per view number).
//! At the end: G5 (every client logged every ballot) and the batch checker. A failure
//! names its seed; `pbvote sim --seed N` replays it with full logs.

mod rng;

use crate::ballot_log::LogLine;
use crate::check::{self, ClientLog, Expect, LiveCheck};
use crate::client::policy::Policy;
use crate::client::{Client, ClientConfig, ClientOutput, Promised};
use crate::link::ConnId;
use crate::node::{Node, NodeConfig, Output, StartRole};
use crate::proto::{ClientId, ClientMsg, Hello, NodeId, PeerMsg, Role, Seq, ServerMsg};
pub use rng::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One run's shape, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub clients: usize,
    pub ballots: u64,
    pub window: u64,
    pub heartbeat: Duration,
    pub miss_limit: u32,
    pub backup_start_delay: Duration,
    pub ballot_interval: Duration,
    /// Each message takes 0..=this on the wire.
    pub max_delay: Duration,
    pub policies: Vec<Policy>,
    /// Most faults injected in the run.
    pub faults: u32,
    /// The run also kills both servers at once and starts a fresh primary (a cold
    /// restart, outside the assignment's fault model).
    pub cold_restart: bool,
    /// Network partitions in the run: links cut (one way or both) and healed later.
    pub partitions: u32,
    /// Clients start knowing only the first primary's address (`--servers` naming one
    /// server), not both: they find every other server through the views they accept.
    pub one_server_known: bool,
}

impl Scenario {
    pub fn from_seed(rng: &mut Rng) -> Scenario {
        let clients = rng.range(1, 7) as usize;
        let policies = (0..clients)
            .map(|i| match rng.range(0, 2) {
                0 => Policy::Yes,
                1 => Policy::No,
                _ => Policy::Random {
                    seed: rng.next_u64() ^ i as u64,
                },
            })
            .collect();
        Scenario {
            clients,
            ballots: rng.range(3, 40),
            window: rng.range(1, 4),
            heartbeat: Duration::from_millis(rng.range(20, 200)),
            miss_limit: rng.range(2, 6) as u32,
            backup_start_delay: Duration::from_millis(rng.range(0, 500)),
            ballot_interval: Duration::from_millis(rng.range(5, 60)),
            max_delay: Duration::from_millis(rng.range(0, 30)),
            policies,
            faults: rng.range(0, 6) as u32,
            cold_restart: rng.chance(1, 6),
            partitions: if rng.chance(1, 2) {
                rng.range(1, 4) as u32
            } else {
                0
            },
            one_server_known: rng.chance(1, 2),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u64,
    pub at_ms: u64,
    pub what: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at step {} (t={} ms): {}",
            self.seed, self.step, self.at_ms, self.what
        )
    }
}

/// What a passing run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub steps: u64,
    pub clients: usize,
    pub ballots: u64,
    pub faults: u32,
    pub virtual_ms: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clients, {} ballots, {} faults, {} steps, {} virtual ms",
            self.clients, self.ballots, self.faults, self.steps, self.virtual_ms
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub failures: u64,
    pub steps: u64,
    pub ballots: u64,
    pub faults: u64,
    pub first_failure: Option<SimFailure>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs, {} failed, {} ballots, {} faults, {} steps",
            self.runs, self.failures, self.ballots, self.faults, self.steps
        )
    }
}

pub fn run_seeds(first: u64, count: u64) -> Summary {
    let mut summary = Summary::default();
    for seed in first..first.saturating_add(count) {
        summary.runs += 1;
        match run_seed(seed) {
            Ok(report) => {
                summary.steps += report.steps;
                summary.ballots += report.ballots;
                summary.faults += u64::from(report.faults);
            }
            Err(failure) => {
                summary.failures += 1;
                summary.first_failure.get_or_insert(failure);
            }
        }
    }
    summary
}

pub fn run_seed(seed: u64) -> Result<Report, SimFailure> {
    let mut rng = Rng::new(seed);
    let scenario = Scenario::from_seed(&mut rng);
    let mut world = World::new(seed, rng, scenario);
    world.run()
}

/// Virtual time the run may take before a lack of progress is a G5 failure.
const TIME_LIMIT: Duration = Duration::from_secs(600);
const STEP_LIMIT: u64 = 2_000_000;
/// Chance per step that a fault strikes, out of 10,000 (while the run has faults left).
const FAULT_CHANCE: u64 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proc {
    Server(usize),
    Client(usize),
}

#[derive(Clone, Debug)]
enum Payload {
    Hello(Hello),
    Client(ClientMsg),
    Server(ServerMsg),
    Peer(PeerMsg),
}

#[derive(Clone, Debug)]
enum Event {
    /// The dial of `conn` completed: tell the dialer.
    Connected {
        conn: usize,
    },
    DialFailed {
        proc: Proc,
        addr: SocketAddr,
    },
    Deliver {
        conn: usize,
        to: Proc,
        payload: Payload,
    },
    /// `to` learns the connection closed; `remote`: the other end closed it (the news
    /// crosses the network), else `to` closed it itself.
    Closed {
        conn: usize,
        to: Proc,
        remote: bool,
    },
    /// SIGCHLD: the backup server `child` of `parent` exited.
    ChildExited {
        parent: usize,
    },
    ClientRestart {
        client: usize,
    },
    /// A fresh primary starts on the first address (after a cold restart).
    ColdStart,
    /// The cut from one host to another heals.
    Heal {
        from: Endpoint,
        to: Endpoint,
    },
    /// Deliver, in order, what a healed cut held on one direction of a connection.
    Release {
        conn: usize,
        side: usize,
    },
}

/// Where a cut applies: a server's address (so a replacement on the same address is cut
/// too, as on a real host) or a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Server(SocketAddr),
    Client(usize),
}

impl Event {
    /// Whom the event is for, if a process.
    fn target(&self) -> Option<Proc> {
        match self {
            Event::Connected { .. } => None,
            Event::DialFailed { proc, .. } => Some(*proc),
            Event::Deliver { to, .. } | Event::Closed { to, .. } => Some(*to),
            Event::ChildExited { parent, .. } => Some(Proc::Server(*parent)),
            Event::ClientRestart { .. }
            | Event::ColdStart
            | Event::Heal { .. }
            | Event::Release { .. } => None,
        }
    }
}

struct SimConn {
    dialer: Proc,
    acceptor: Proc,
    /// Per direction (0: dialer to acceptor), the latest scheduled arrival: TCP is FIFO.
    last_arrival: [Duration; 2],
    /// Per direction, when the sender crashed with output not yet written: what was due
    /// to arrive after this is lost (a prefix of the stream got out, as with a real
    /// SIGKILL between two writes).
    lost_after: [Option<Duration>; 2],
    /// Each side stops receiving once it closed or was told of the close.
    open: [bool; 2],
    /// The dialer was told the connection is up (before that, a close is a failed dial).
    established: bool,
}

struct SimServer {
    node: Node,
    addr: SocketAddr,
    /// Where it spawns its backup: the spawner's own address, so the pair keeps swapping
    /// between the two addresses clients know (as `pbvote server` does).
    backup_listen: SocketAddr,
    alive: bool,
    /// SIGSTOPped until then.
    paused_until: Option<Duration>,
    parent: Option<usize>,
    /// The backup it spawned last, if that still runs.
    child: Option<usize>,
}

struct SimClient {
    /// `None` while crashed.
    core: Option<Client>,
    log: Vec<LogLine>,
    /// Where a restart looks for servers (as a real client's `--servers`).
    servers: Vec<SocketAddr>,
    /// Bumped at each crash so the dead incarnation's connections are ignored.
    incarnation: u32,
    /// What the client persisted of its promises (its `.view` file): the number and the
    /// servers of the view it was made to.
    promised: Promised,
}

struct World {
    seed: u64,
    rng: Rng,
    scenario: Scenario,
    base: Instant,
    now: Duration,
    step: u64,
    servers: Vec<SimServer>,
    clients: Vec<SimClient>,
    conns: Vec<SimConn>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Event>>,
    live: LiveCheck,
    faults_left: u32,
    faults_done: u32,
    /// G4: which server acted as primary in each view number.
    primaries: BTreeMap<u64, usize>,
    /// The two addresses the cluster starts on; a cold restart reuses the first.
    addrs: (SocketAddr, SocketAddr),
    cold_restart_pending: bool,
    /// Directed cuts in force: nothing from the first reaches the second.
    cuts: BTreeSet<(Endpoint, Endpoint)>,
    /// Per (connection, sending side), what arrived at a cut, in order, for after it heals.
    held: BTreeMap<(usize, usize), VecDeque<Event>>,
    partitions_left: u32,
    /// A server that took a message and has not yet performed its outputs, and when its
    /// turn began: a host reads all that is ready before it writes, so the outputs of
    /// several inputs may wait for one loop turn's end (and messages that ride together
    /// join in the node's queue).
    undrained: Option<(usize, Duration)>,
}

/// The longest loop turn the simulator models: a message arriving this soon after the
/// turn began may be read in it.
const TURN: Duration = Duration::from_millis(1);

impl World {
    fn new(seed: u64, rng: Rng, scenario: Scenario) -> World {
        let base = Instant::now();
        let live = LiveCheck::new(scenario.clients as u32, scenario.policies.clone());
        let mut world = World {
            seed,
            rng,
            base,
            now: Duration::ZERO,
            step: 0,
            servers: Vec::new(),
            clients: Vec::new(),
            conns: Vec::new(),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            live,
            faults_left: scenario.faults,
            faults_done: 0,
            primaries: BTreeMap::new(),
            addrs: (
                SocketAddr::from(([10, 0, 0, 1], 7000)),
                SocketAddr::from(([10, 0, 0, 2], 7000)),
            ),
            cold_restart_pending: scenario.cold_restart,
            cuts: BTreeSet::new(),
            held: BTreeMap::new(),
            partitions_left: scenario.partitions,
            undrained: None,
            scenario,
        };
        let (p_addr, b_addr) = world.addrs;
        world.add_server(StartRole::Primary, p_addr, b_addr, None);
        let known = if world.scenario.one_server_known {
            vec![p_addr]
        } else {
            vec![p_addr, b_addr]
        };
        for _ in 0..world.scenario.clients {
            world.clients.push(SimClient {
                core: None,
                log: Vec::new(),
                servers: known.clone(),
                incarnation: 0,
                promised: Promised::default(),
            });
        }
        for i in 0..world.clients.len() {
            world.start_client(i);
        }
        world
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn start_client(&mut self, i: usize) {
        let cfg = ClientConfig {
            id: ClientId(format!("c{i}")),
            servers: self.clients[i].servers.clone(),
            policy: self.scenario.policies[i],
            until: Some(Seq(self.scenario.ballots)),
            redial: Duration::from_millis(100),
        };
        let log = &self.clients[i].log;
        let recent: Vec<_> = log.iter().map(|l| l.tally).collect();
        let last = Seq(log.len() as u64);
        let mut core = Client::new(
            cfg,
            last,
            &recent,
            &self.clients[i].promised,
            self.instant(),
        );
        core.handle_timeout(self.instant());
        self.clients[i].core = Some(core);
    }

    fn add_server(
        &mut self,
        start: StartRole,
        addr: SocketAddr,
        backup_listen: SocketAddr,
        parent: Option<usize>,
    ) -> usize {
        let s = &self.scenario;
        let cfg = NodeConfig {
            node: NodeId(self.rng.next_u64()),
            listen: addr,
            start,
            heartbeat: s.heartbeat,
            miss_limit: s.miss_limit,
            backup_start_delay: s.backup_start_delay,
            ballot_interval: s.ballot_interval,
            ballots: Some(s.ballots),
            min_clients: s.clients,
            window: s.window,
            spawn_backup: true,
        };
        if let Err(e) = cfg.validate() {
            panic!(
                "seed {}: the scenario's server config is invalid: {e}",
                self.seed
            );
        }
        let node = Node::new(cfg, self.instant());
        self.servers.push(SimServer {
            node,
            addr,
            backup_listen,
            alive: true,
            paused_until: None,
            parent,
            child: None,
        });
        let idx = self.servers.len() - 1;
        self.drain_server(idx);
        idx
    }

    fn fail(&self, what: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            step: self.step,
            at_ms: self.now.as_millis() as u64,
            what,
        }
    }

    fn done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.log.len() as u64 >= self.scenario.ballots)
    }

    fn run(&mut self) -> Result<Report, SimFailure> {
        for i in 0..self.clients.len() {
            self.drain(Proc::Client(i))?;
        }
        while !self.done() {
            self.step += 1;
            if self.now > TIME_LIMIT || self.step > STEP_LIMIT {
                let logged: Vec<u64> = self.clients.iter().map(|c| c.log.len() as u64).collect();
                let servers: Vec<String> = self
                    .servers
                    .iter()
                    .filter(|s| s.alive)
                    .map(|s| format!("{}: {}", s.addr, s.node.describe(self.instant())))
                    .collect();
                let clients: Vec<String> = self
                    .clients
                    .iter()
                    .map(|c| c.core.as_ref().map_or("down".to_string(), |c| c.describe()))
                    .collect();
                return Err(self.fail(format!(
                    "G5: no progress: logs hold {logged:?} of {} ballots; servers {servers:#?}; clients {clients:#?}",
                    self.scenario.ballots
                )));
            }
            if self.faults_left > 0 && self.rng.chance(FAULT_CHANCE, 10_000) {
                self.inject_fault();
            }
            if self.cold_restart_pending && self.steady() && self.rng.chance(5, 10_000) {
                self.cold_restart();
            }
            if self.partitions_left > 0
                && self.cuts.is_empty()
                && self.steady()
                && self.rng.chance(FAULT_CHANCE, 10_000)
            {
                self.partition();
            }
            self.step_once()?;
            self.check_one_primary_per_view()?;
        }
        self.final_check()?;
        Ok(Report {
            steps: self.step,
            clients: self.clients.len(),
            ballots: self.scenario.ballots,
            faults: self.faults_done,
            virtual_ms: self.now.as_millis() as u64,
        })
    }

    fn is_paused(&self, i: usize) -> bool {
        self.servers[i].paused_until.is_some_and(|t| t > self.now)
    }

    fn runnable(&self, i: usize) -> bool {
        self.servers[i].alive && !self.is_paused(i)
    }

    /// The acting primary and its installed, live backup, if the service is in that state.
    fn healthy_pair(&self) -> Option<(usize, usize)> {
        let p = (0..self.servers.len())
            .find(|&i| self.runnable(i) && self.servers[i].node.is_acting_primary())?;
        let view = self.servers[p].node.view();
        let backup = view.backup?;
        let b = (0..self.servers.len()).find(|&i| {
            let s = &self.servers[i];
            s.alive && s.addr == backup && s.node.role() == Role::Backup && s.node.view() == view
        })?;
        (!self.is_paused(b)).then_some((p, b))
    }

    /// The service is in a steady state: one acting primary not changing its view, nobody
    /// else trying to take over, nobody paused. The fault model allows one failure at a
    /// time, so a new fault strikes only then.
    fn steady(&self) -> bool {
        let paused = (0..self.servers.len()).any(|i| self.servers[i].alive && self.is_paused(i));
        let primaries: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].alive && self.servers[i].node.is_acting_primary())
            .collect();
        let candidates = (0..self.servers.len()).any(|i| {
            self.servers[i].alive
                && !self.servers[i].node.is_acting_primary()
                && self.servers[i].node.proposing().is_some()
        });
        !paused
            && !candidates
            && primaries.len() == 1
            && self.servers[primaries[0]].node.proposing().is_none()
    }

    fn inject_fault(&mut self) {
        if !self.steady() {
            return;
        }
        let pair = self.healthy_pair();
        match self.rng.range(0, 5) {
            // The primary crashes or pauses, only while a live backup can take over.
            0 | 1 => {
                let Some((p, _)) = pair else { return };
                if self.rng.chance(1, 2) {
                    self.crash_server(p, "primary");
                } else {
                    self.pause_server(p, "primary");
                }
            }
            // A backup (installed or joining) crashes or pauses.
            2 | 3 => {
                let candidates: Vec<usize> = (0..self.servers.len())
                    .filter(|&i| self.runnable(i) && !self.servers[i].node.is_acting_primary())
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let b = candidates[self.rng.range(0, candidates.len() as u64 - 1) as usize];
                if self.rng.chance(1, 2) {
                    self.crash_server(b, "backup");
                } else {
                    self.pause_server(b, "backup");
                }
            }
            // A client crashes and restarts from its log.
            _ => {
                let c = self.rng.range(0, self.clients.len() as u64 - 1) as usize;
                if self.clients[c].core.is_none() {
                    return;
                }
                self.crash_client(c);
            }
        }
    }

    /// Cuts some links (primary-backup, or a server from some clients; one way or both)
    /// and heals them after a while.
    fn partition(&mut self) {
        let primary = (0..self.servers.len())
            .find(|&i| self.servers[i].alive && self.servers[i].node.is_acting_primary());
        let Some(p) = primary else { return };
        let p_addr = self.servers[p].addr;
        let b_addr = self.servers[p]
            .node
            .view()
            .backup
            .unwrap_or(self.servers[p].backup_listen);
        let (pe, be) = (Endpoint::Server(p_addr), Endpoint::Server(b_addr));
        let mut pairs = Vec::new();
        match self.rng.range(0, 4) {
            0 => pairs.extend([(pe, be), (be, pe)]),
            1 => pairs.push((pe, be)),
            2 => pairs.push((be, pe)),
            kind => {
                let server = if kind == 3 { pe } else { be };
                let count = self.rng.range(1, self.clients.len() as u64);
                for c in 0..count as usize {
                    let client = Endpoint::Client(c);
                    if self.rng.chance(1, 2) {
                        pairs.extend([(server, client), (client, server)]);
                    } else if self.rng.chance(1, 2) {
                        pairs.push((server, client));
                    } else {
                        pairs.push((client, server));
                    }
                }
            }
        }
        let peer_timeout = self.scenario.heartbeat * self.scenario.miss_limit;
        let ms = self.rng.range(10, 4 * peer_timeout.as_millis() as u64);
        self.partitions_left -= 1;
        self.faults_done += 1;
        log::warn!(
            "sim-partition t_ms={} cuts={pairs:?} for_ms={ms}",
            self.now.as_millis()
        );
        for (from, to) in pairs {
            self.cuts.insert((from, to));
            self.schedule(
                self.now + Duration::from_millis(ms),
                Event::Heal { from, to },
            );
        }
    }

    fn endpoint(&self, proc: Proc) -> Endpoint {
        match proc {
            Proc::Server(i) => Endpoint::Server(self.servers[i].addr),
            Proc::Client(i) => Endpoint::Client(i),
        }
    }

    fn is_cut(&self, from: Proc, to: Proc) -> bool {
        self.cuts
            .contains(&(self.endpoint(from), self.endpoint(to)))
    }

    /// Both servers die at once; a fresh primary starts later on the first address and
    /// rebuilds the results from the clients' logs.
    fn cold_restart(&mut self) {
        self.cold_restart_pending = false;
        self.faults_left += 1;
        self.note_fault("cold-restart: every server killed".to_string());
        for i in 0..self.servers.len() {
            self.kill_server(i, true);
        }
        let ms = self.rng.range(0, 1000);
        self.schedule(self.now + Duration::from_millis(ms), Event::ColdStart);
    }

    fn note_fault(&mut self, what: String) {
        self.faults_left -= 1;
        self.faults_done += 1;
        log::warn!("sim-fault t_ms={} {what}", self.now.as_millis());
    }

    fn crash_server(&mut self, i: usize, what: &str) {
        self.note_fault(format!("crash {what} server={}", self.servers[i].addr));
        self.kill_server(i, true);
    }

    /// The process is gone: its connections close, its parent hears SIGCHLD. A SIGKILL
    /// (`crash`) also loses some of what it had not written yet; an exit flushed first.
    fn kill_server(&mut self, i: usize, crash: bool) {
        if !self.servers[i].alive {
            return;
        }
        self.servers[i].alive = false;
        self.servers[i].paused_until = None;
        if self.undrained.is_some_and(|(u, _)| u == i) {
            // Killed mid-turn: what it had not performed yet never happens.
            self.undrained = None;
            while self.servers[i].node.poll_output().is_some() {}
        }
        if crash {
            self.lose_unwritten(Proc::Server(i));
        }
        self.close_all(Proc::Server(i));
        if let Some(parent) = self.servers[i].parent {
            if self.servers[parent].alive && self.servers[parent].child == Some(i) {
                self.servers[parent].child = None;
                let at = self.now + self.delay();
                self.schedule(at, Event::ChildExited { parent });
            }
        }
    }

    fn pause_server(&mut self, i: usize, what: &str) {
        // Stopped between two turns: the one under way is finished first.
        if self.undrained.is_some_and(|(u, _)| u == i) {
            self.undrained = None;
            self.drain_server(i);
        }
        let peer_timeout = self.scenario.heartbeat * self.scenario.miss_limit;
        let ms = self.rng.range(1, 3 * peer_timeout.as_millis() as u64);
        self.note_fault(format!(
            "pause {what} server={} for_ms={ms}",
            self.servers[i].addr
        ));
        self.servers[i].paused_until = Some(self.now + Duration::from_millis(ms));
    }

    fn crash_client(&mut self, c: usize) {
        self.note_fault(format!("crash client=c{c}"));
        // A restarted client knows what `pbvote client` would: its `--servers` and the
        // servers named in its promise file (`promised`), nothing else.
        self.clients[c].core = None;
        self.clients[c].incarnation += 1;
        self.lose_unwritten(Proc::Client(c));
        self.close_all(Proc::Client(c));
        let ms = self.rng.range(1, 500);
        self.schedule(
            self.now + Duration::from_millis(ms),
            Event::ClientRestart { client: c },
        );
    }

    /// Every connection `proc` is an end of, with its side (0: dialer).
    fn ends_of(&self, proc: Proc) -> Vec<(usize, usize)> {
        (0..self.conns.len())
            .filter(|&c| self.conns[c].dialer == proc || self.conns[c].acceptor == proc)
            .map(|c| (c, self.side(c, proc)))
            .collect()
    }

    /// On each connection of `proc`, a random suffix of what it sent and has not arrived
    /// yet is lost.
    fn lose_unwritten(&mut self, proc: Proc) {
        for (c, side) in self.ends_of(proc) {
            let pending = self.conns[c].last_arrival[side].saturating_sub(self.now);
            if pending.is_zero() {
                continue;
            }
            let kept = self.rng.range(0, pending.as_nanos() as u64);
            let cut = self.now + Duration::from_nanos(kept);
            // A connection of an earlier life may be cut already: never later than that.
            let cut = self.conns[c].lost_after[side].map_or(cut, |earlier| earlier.min(cut));
            self.conns[c].lost_after[side] = Some(cut);
        }
    }

    /// Every open connection of `proc` is gone: the other ends hear of it after what is in
    /// flight towards them.
    fn close_all(&mut self, proc: Proc) {
        for (c, side) in self.ends_of(proc) {
            let conn = &self.conns[c];
            let other = if side == 0 {
                conn.acceptor
            } else {
                conn.dialer
            };
            let other_side = 1 - side;
            let established = conn.established;
            self.conns[c].open[side] = false;
            // A dial still in flight fails when its Connected event finds this.
            if established && self.conns[c].open[other_side] {
                self.tell_remote_close(c, side, other);
            }
        }
    }

    fn check_one_primary_per_view(&mut self) -> Result<(), SimFailure> {
        // In time, not only per view number: two servers may never both be in charge
        // (acting primary with a majority's lease) at the same moment.
        let now = self.instant();
        let in_charge: Vec<SocketAddr> = self
            .servers
            .iter()
            .filter(|s| s.alive && s.node.is_acting_primary() && s.node.holds_lease(now))
            .map(|s| s.addr)
            .collect();
        if in_charge.len() > 1 {
            return Err(self.fail(format!(
                "G4: {in_charge:?} both act as primary with a majority's lease"
            )));
        }
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            if !s.alive || !s.node.is_acting_primary() {
                continue;
            }
            let number = s.node.view().number.0;
            match self.primaries.get(&number) {
                Some(&other) if other != i => {
                    return Err(self.fail(format!(
                        "G4: servers {} and {} both primary in view {number}",
                        self.servers[other].addr, s.addr
                    )));
                }
                Some(_) => {}
                None => {
                    self.primaries.insert(number, i);
                }
            }
        }
        Ok(())
    }

    /// Advances to the earliest event or timer and performs it.
    fn step_once(&mut self) -> Result<(), SimFailure> {
        if let Some((i, began)) = self.undrained.take() {
            if !self.next_event_delivers_to(Proc::Server(i), began) {
                self.drain_server(i);
                return Ok(());
            }
            self.undrained = Some((i, began));
        }
        let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let mut next_timer: Option<(Duration, Proc)> = None;
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            if !s.alive {
                continue;
            }
            if let Some(t) = s.node.poll_timeout() {
                // A paused process's timers fire when it resumes.
                let mut at = t.saturating_duration_since(self.base);
                if let Some(until) = s.paused_until {
                    at = at.max(until);
                }
                if next_timer.is_none_or(|(nt, _)| at < nt) {
                    next_timer = Some((at, Proc::Server(i)));
                }
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(t) = c.core.as_ref().and_then(|c| c.poll_timeout()) {
                let at = t.saturating_duration_since(self.base);
                if next_timer.is_none_or(|(nt, _)| at < nt) {
                    next_timer = Some((at, Proc::Client(i)));
                }
            }
        }
        match (next_event, next_timer) {
            (Some(te), Some((tt, _))) if te <= tt => self.pop_event(),
            (Some(_), None) => self.pop_event(),
            (_, Some((tt, proc))) => {
                self.now = self.now.max(tt);
                let now = self.instant();
                match proc {
                    Proc::Server(i) => self.servers[i].node.handle_timeout(now),
                    Proc::Client(i) => {
                        if let Some(core) = &mut self.clients[i].core {
                            core.handle_timeout(now);
                        }
                    }
                }
                self.drain(proc)
            }
            (None, None) => Err(self.fail("G5: nothing left to happen".to_string())),
        }
    }

    /// The event at the head of the queue is a message for `proc` that arrives within
    /// the turn that `proc` began at `began`.
    fn next_event_delivers_to(&self, proc: Proc, began: Duration) -> bool {
        self.queue.peek().is_some_and(|Reverse((at, _, id))| {
            *at <= began + TURN
                && matches!(self.events[*id], Some(Event::Deliver { to, .. }) if to == proc)
        })
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        let id = self.events.len();
        self.events.push(Some(event));
        self.queue.push(Reverse((at, id as u64, id)));
    }

    fn delay(&mut self) -> Duration {
        let max = self.scenario.max_delay.as_micros() as u64;
        Duration::from_micros(self.rng.range(0, max))
    }

    /// Whether `proc` can take an event now; a paused server takes it when it resumes.
    fn deliverable(&mut self, proc: Proc, event: &Event) -> Option<bool> {
        match proc {
            Proc::Server(i) => {
                if !self.servers[i].alive {
                    return Some(false);
                }
                if let Some(until) = self.servers[i].paused_until.filter(|t| *t > self.now) {
                    self.schedule(until, event.clone());
                    return None;
                }
                Some(true)
            }
            Proc::Client(i) => Some(self.clients[i].core.is_some()),
        }
    }

    fn pop_event(&mut self) -> Result<(), SimFailure> {
        let Some(Reverse((at, _, id))) = self.queue.pop() else {
            return Ok(());
        };
        self.now = self.now.max(at);
        let Some(event) = self.events[id].take() else {
            return Ok(());
        };
        self.dispatch(event)
    }

    /// Performs an event, unless a cut holds it back.
    fn dispatch(&mut self, event: Event) -> Result<(), SimFailure> {
        let leg = match &event {
            Event::Deliver { conn, to, .. } => Some((*conn, *to)),
            Event::Closed {
                conn,
                to,
                remote: true,
            } => Some((*conn, *to)),
            _ => None,
        };
        if let Some((conn, to)) = leg {
            let from = if self.conns[conn].dialer == to {
                self.conns[conn].acceptor
            } else {
                self.conns[conn].dialer
            };
            let key = (conn, self.side(conn, from));
            let queued = self.held.get(&key).is_some_and(|q| !q.is_empty());
            if queued || self.is_cut(from, to) {
                self.held.entry(key).or_default().push_back(event);
                return Ok(());
            }
        }
        if let Event::Connected { conn } = &event {
            let (d, a) = (self.conns[*conn].dialer, self.conns[*conn].acceptor);
            if self.is_cut(d, a) || self.is_cut(a, d) {
                // The handshake is lost at the cut; TCP retries it.
                let at = self.now + Duration::from_millis(200);
                self.schedule(at, event);
                return Ok(());
            }
        }
        if let Some(target) = event.target() {
            match self.deliverable(target, &event) {
                Some(true) => {}
                Some(false) | None => return Ok(()),
            }
        }
        let now = self.instant();
        match event {
            Event::Connected { conn } => {
                let dialer = self.conns[conn].dialer;
                let acceptor = self.conns[conn].acceptor;
                let addr = self.proc_addr(acceptor);
                let Some(true) = self.deliverable(dialer, &Event::Connected { conn }) else {
                    return Ok(());
                };
                let acceptor_up = match acceptor {
                    Proc::Server(i) => self.servers[i].alive,
                    Proc::Client(_) => false,
                };
                if !self.conns[conn].open[0] {
                    return Ok(());
                }
                if !acceptor_up || !self.conns[conn].open[1] {
                    self.conns[conn].open = [false, false];
                    match dialer {
                        Proc::Server(i) => self.servers[i].node.handle_dial_failed(addr, now),
                        Proc::Client(i) => {
                            if let Some(core) = &mut self.clients[i].core {
                                core.handle_dial_failed(addr, now);
                            }
                        }
                    }
                    return self.drain(dialer);
                }
                let id = conn_id(conn);
                self.conns[conn].established = true;
                match dialer {
                    Proc::Server(i) => self.servers[i].node.handle_connected(id, addr, now),
                    Proc::Client(i) => {
                        if let Some(core) = &mut self.clients[i].core {
                            core.handle_connected(id, addr, now);
                        }
                    }
                }
                self.drain(dialer)
            }
            Event::DialFailed { proc, addr } => {
                match proc {
                    Proc::Server(i) => self.servers[i].node.handle_dial_failed(addr, now),
                    Proc::Client(i) => {
                        if let Some(core) = &mut self.clients[i].core {
                            core.handle_dial_failed(addr, now);
                        }
                    }
                }
                self.drain(proc)
            }
            Event::Closed { conn, to, .. } => {
                let side = self.side(conn, to);
                if !self.conns[conn].open[side] {
                    return Ok(());
                }
                self.conns[conn].open[side] = false;
                match to {
                    Proc::Server(i) => self.servers[i].node.handle_closed(conn_id(conn), now),
                    Proc::Client(i) => {
                        if let Some(core) = &mut self.clients[i].core {
                            core.handle_closed(conn_id(conn), now);
                        }
                    }
                }
                self.drain(to)
            }
            Event::Deliver { conn, to, payload } => {
                let side = self.side(conn, to);
                if !self.conns[conn].open[side] {
                    return Ok(());
                }
                if self.conns[conn].lost_after[1 - side].is_some_and(|cut| self.now > cut) {
                    return Ok(());
                }
                let id = conn_id(conn);
                match (to, payload) {
                    (Proc::Server(i), Payload::Hello(hello)) => {
                        self.servers[i].node.handle_hello(id, hello, now)
                    }
                    (Proc::Server(i), Payload::Client(msg)) => {
                        self.servers[i].node.handle_client_msg(id, msg, now)
                    }
                    (Proc::Server(i), Payload::Peer(msg)) => {
                        self.servers[i].node.handle_peer_msg(id, msg, now)
                    }
                    (Proc::Client(i), Payload::Server(msg)) => {
                        if let Some(core) = &mut self.clients[i].core {
                            core.handle_msg(id, msg, now);
                        }
                    }
                    (to, payload) => {
                        return Err(self.fail(format!("misrouted {payload:?} to {to:?}")));
                    }
                }
                if let Proc::Server(i) = to {
                    let began = self
                        .undrained
                        .filter(|&(u, _)| u == i)
                        .map_or(self.now, |(_, began)| began);
                    if self.next_event_delivers_to(to, began) && self.rng.chance(1, 2) {
                        self.undrained = Some((i, began));
                        return Ok(());
                    }
                }
                self.drain(to)
            }
            Event::ChildExited { parent } => {
                self.servers[parent].node.handle_child_exit(now);
                self.drain(Proc::Server(parent))
            }
            Event::Heal { from, to } => {
                self.cuts.remove(&(from, to));
                log::warn!(
                    "sim-heal t_ms={} from={from:?} to={to:?}",
                    self.now.as_millis()
                );
                let healed: Vec<(usize, usize)> = self
                    .held
                    .keys()
                    .copied()
                    .filter(|&(conn, side)| {
                        let c = &self.conns[conn];
                        let (f, t) = if side == 0 {
                            (c.dialer, c.acceptor)
                        } else {
                            (c.acceptor, c.dialer)
                        };
                        (self.endpoint(f), self.endpoint(t)) == (from, to)
                    })
                    .collect();
                for (conn, side) in healed {
                    self.schedule(self.now, Event::Release { conn, side });
                }
                Ok(())
            }
            Event::Release { conn, side } => {
                let held = self.held.remove(&(conn, side)).unwrap_or_default();
                for event in held {
                    self.dispatch(event)?;
                }
                Ok(())
            }
            Event::ColdStart => {
                log::warn!("sim-cold-start t_ms={}", self.now.as_millis());
                let (p_addr, b_addr) = self.addrs;
                let i = self.add_server(StartRole::Primary, p_addr, b_addr, None);
                self.drain(Proc::Server(i))
            }
            Event::ClientRestart { client } => {
                log::warn!("sim-restart client=c{client} t_ms={}", self.now.as_millis());
                self.start_client(client);
                self.drain(Proc::Client(client))
            }
        }
    }

    fn side(&self, conn: usize, proc: Proc) -> usize {
        usize::from(self.conns[conn].dialer != proc)
    }

    fn proc_addr(&self, proc: Proc) -> SocketAddr {
        match proc {
            Proc::Server(i) => self.servers[i].addr,
            Proc::Client(i) => SocketAddr::from(([10, 0, 1, 1], 20000 + i as u16)),
        }
    }

    fn send(&mut self, from: Proc, conn: ConnId, payload: Payload) {
        let c = conn.slot as usize;
        let Some(sc) = self.conns.get(c) else {
            return;
        };
        let side = self.side(c, from);
        if !sc.open[side] {
            return;
        }
        let to = if side == 0 { sc.acceptor } else { sc.dialer };
        let at = (self.now + self.delay()).max(self.conns[c].last_arrival[side]);
        self.conns[c].last_arrival[side] = at;
        self.schedule(
            at,
            Event::Deliver {
                conn: c,
                to,
                payload,
            },
        );
    }

    fn close(&mut self, from: Proc, conn: ConnId) {
        let c = conn.slot as usize;
        let side = self.side(c, from);
        if !self.conns[c].open[side] {
            return;
        }
        let other = if side == 0 {
            self.conns[c].acceptor
        } else {
            self.conns[c].dialer
        };
        self.schedule(
            self.now,
            Event::Closed {
                conn: c,
                to: from,
                remote: false,
            },
        );
        self.tell_remote_close(c, side, other);
    }

    /// `other` hears that `side` closed connection `c`: after the data already sent.
    fn tell_remote_close(&mut self, c: usize, side: usize, other: Proc) {
        let at = self.conns[c].last_arrival[side].max(self.now) + self.delay();
        self.conns[c].last_arrival[side] = at;
        self.schedule(
            at,
            Event::Closed {
                conn: c,
                to: other,
                remote: true,
            },
        );
    }

    fn dial(&mut self, from: Proc, addr: SocketAddr) {
        let at = self.now + self.delay();
        match self.servers.iter().position(|s| s.addr == addr && s.alive) {
            Some(target) => {
                let conn = self.conns.len();
                self.conns.push(SimConn {
                    dialer: from,
                    acceptor: Proc::Server(target),
                    last_arrival: [at, at],
                    lost_after: [None, None],
                    open: [true, true],
                    established: false,
                });
                self.schedule(at, Event::Connected { conn });
            }
            None => self.schedule(at, Event::DialFailed { proc: from, addr }),
        }
    }

    fn drain(&mut self, proc: Proc) -> Result<(), SimFailure> {
        match proc {
            Proc::Server(i) => {
                self.drain_server(i);
                Ok(())
            }
            Proc::Client(i) => self.drain_client(i),
        }
    }

    fn drain_server(&mut self, i: usize) {
        let proc = Proc::Server(i);
        while let Some(out) = self.servers[i].node.poll_output() {
            match out {
                Output::Dial(addr) => self.dial(proc, addr),
                Output::Hello(c, hello) => self.send(proc, c, Payload::Hello(hello)),
                Output::ToClient(c, msg) => self.send(proc, c, Payload::Server(msg)),
                Output::ToClients(conns, msg) => {
                    for c in conns {
                        self.send(proc, c, Payload::Server(msg.clone()));
                    }
                }
                Output::ToPeer(c, msg) => self.send(proc, c, Payload::Peer(msg)),
                Output::Status(_, _) => {}
                Output::Close(c, _) => self.close(proc, c),
                Output::SpawnBackup => {
                    if let Some(old) = self.servers[i].child.take() {
                        self.kill_server(old, true);
                    }
                    let (join, listen) = (self.servers[i].addr, self.servers[i].backup_listen);
                    if self.servers.iter().any(|s| s.alive && s.addr == listen) {
                        // The port is taken (a stale server still runs there): the child
                        // fails to bind and exits at once.
                        let at = self.now + self.delay();
                        self.schedule(at, Event::ChildExited { parent: i });
                        continue;
                    }
                    let child = self.add_server(StartRole::Backup { join }, listen, join, Some(i));
                    self.servers[i].child = Some(child);
                }
                Output::Exit(_) => {
                    self.kill_server(i, false);
                    return;
                }
                // Delivery is modelled per message; a connection's buffer is never full.
                Output::WhenDrained(c) => self.servers[i].node.handle_drained(c),
            }
        }
    }

    /// Performs every output of a client, checking each log line as it is appended.
    fn drain_client(&mut self, i: usize) -> Result<(), SimFailure> {
        let proc = Proc::Client(i);
        loop {
            let Some(out) = self.clients[i].core.as_mut().and_then(|c| c.poll_output()) else {
                return Ok(());
            };
            match out {
                ClientOutput::Dial(addr) => self.dial(proc, addr),
                ClientOutput::Hello(c, hello) => self.send(proc, c, Payload::Hello(hello)),
                ClientOutput::Send(c, msg) => self.send(proc, c, Payload::Client(msg)),
                ClientOutput::Close(c) => self.close(proc, c),
                ClientOutput::Promise(view) => {
                    self.clients[i].promised = Promised {
                        view: view.number,
                        servers: view.servers().collect(),
                    };
                }
                ClientOutput::Append(line) => {
                    self.clients[i].log.push(line);
                    if let Err(v) = self.live.observe(i, &format!("c{i}"), line) {
                        return Err(self.fail(v.to_string()));
                    }
                }
            }
        }
    }

    fn final_check(&self) -> Result<(), SimFailure> {
        let logs: Vec<ClientLog> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| ClientLog {
                name: format!("c{i}"),
                lines: c.log.clone(),
                torn: false,
                policy: Some(self.scenario.policies[i]),
            })
            .collect();
        let violations = check::check(
            &logs,
            &Expect {
                ballots: Some(self.scenario.ballots),
                voters: None,
            },
        );
        match violations.first() {
            None => Ok(()),
            Some(v) => Err(self.fail(v.to_string())),
        }
    }
}

fn conn_id(conn: usize) -> ConnId {
    ConnId {
        slot: conn as u32,
        gen: 0,
    }
}
