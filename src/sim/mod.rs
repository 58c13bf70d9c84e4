//! The deterministic simulator: the real [`Node`] and [`Client`] cores on a simulated
//! network and clock, driven by one seed. Every link delivers in order (as TCP does) after
//! a random delay; G1-G3 are checked after every step and G5 (all ballots complete) at the
//! end. A failure names its seed; `pbvote sim --seed N` replays it with full logs.
//!
//! Faults (crashes, pauses, partitions) plug into [`World::step`]'s event kinds as the
//! failover issues add them.

mod rng;

use crate::ballot_log::LogLine;
use crate::check::{self, ClientLog, Expect, LiveCheck};
use crate::client::policy::Policy;
use crate::client::{Client, ClientConfig, ClientOutput};
use crate::link::ConnId;
use crate::node::{Node, NodeConfig, Output, StartRole};
use crate::proto::{ClientId, ClientMsg, Hello, LinkKind, NodeId, PeerMsg, Seq, ServerMsg};
pub use rng::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
    pub virtual_ms: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clients, {} ballots, {} steps, {} virtual ms",
            self.clients, self.ballots, self.steps, self.virtual_ms
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub failures: u64,
    pub steps: u64,
    pub ballots: u64,
    pub first_failure: Option<SimFailure>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs, {} failed, {} ballots, {} steps",
            self.runs, self.failures, self.ballots, self.steps
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
    Closed {
        conn: usize,
        to: Proc,
    },
}

struct SimConn {
    dialer: Proc,
    acceptor: Proc,
    /// Per direction (0: dialer to acceptor), the latest scheduled arrival: TCP is FIFO.
    last_arrival: [Duration; 2],
    /// Each side stops receiving once it closed or was told of the close.
    open: [bool; 2],
    kind: Option<LinkKind>,
}

struct SimServer {
    node: Node,
    addr: SocketAddr,
}

struct SimClient {
    core: Client,
    log: Vec<LogLine>,
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
    next_port: u16,
}

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
            next_port: 7000,
            scenario,
        };
        let primary = world.add_server(StartRole::Primary);
        let primary_addr = world.servers[primary].addr;
        for (i, policy) in world.scenario.policies.clone().into_iter().enumerate() {
            let cfg = ClientConfig {
                id: ClientId(format!("c{i}")),
                servers: vec![primary_addr],
                policy,
                until: Some(Seq(world.scenario.ballots)),
                redial: Duration::from_millis(100),
            };
            world.clients.push(SimClient {
                core: Client::new(cfg, Seq(0), base),
                log: Vec::new(),
            });
        }
        world
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn add_server(&mut self, start: StartRole) -> usize {
        let addr = SocketAddr::from(([10, 0, 0, 1], self.next_port));
        self.next_port += 1;
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
        let node = Node::new(cfg, self.instant());
        self.servers.push(SimServer { node, addr });
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

    fn run(&mut self) -> Result<Report, SimFailure> {
        for i in 0..self.clients.len() {
            let now = self.instant();
            self.clients[i].core.handle_timeout(now);
            self.drain(Proc::Client(i))?;
        }
        while !self.clients.iter().all(|c| c.core.is_done()) {
            self.step += 1;
            if self.now > TIME_LIMIT || self.step > STEP_LIMIT {
                let logged: Vec<u64> = self.clients.iter().map(|c| c.log.len() as u64).collect();
                return Err(self.fail(format!(
                    "G5: no progress: logs hold {logged:?} of {} ballots",
                    self.scenario.ballots
                )));
            }
            self.step_once()?;
        }
        self.final_check()?;
        Ok(Report {
            steps: self.step,
            clients: self.clients.len(),
            ballots: self.scenario.ballots,
            virtual_ms: self.now.as_millis() as u64,
        })
    }

    /// Advances to the earliest event or timer and performs it.
    fn step_once(&mut self) -> Result<(), SimFailure> {
        let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let next_timer = self
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.node.poll_timeout().map(|t| (t, Proc::Server(i))))
            .chain(
                self.clients
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.core.poll_timeout().map(|t| (t, Proc::Client(i)))),
            )
            .min()
            .map(|(t, p)| (t.saturating_duration_since(self.base), p));
        match (next_event, next_timer) {
            (Some(te), Some((tt, _))) if te <= tt => self.pop_event(),
            (Some(_), None) => self.pop_event(),
            (_, Some((tt, proc))) => {
                self.now = self.now.max(tt);
                let now = self.instant();
                match proc {
                    Proc::Server(i) => self.servers[i].node.handle_timeout(now),
                    Proc::Client(i) => self.clients[i].core.handle_timeout(now),
                }
                self.drain(proc)
            }
            (None, None) => Err(self.fail("G5: nothing left to happen".to_string())),
        }
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

    fn pop_event(&mut self) -> Result<(), SimFailure> {
        let Some(Reverse((at, _, id))) = self.queue.pop() else {
            return Ok(());
        };
        self.now = self.now.max(at);
        let Some(event) = self.events[id].take() else {
            return Ok(());
        };
        let now = self.instant();
        match event {
            Event::Connected { conn } => {
                let dialer = self.conns[conn].dialer;
                let addr = self.proc_addr(self.conns[conn].acceptor);
                let id = conn_id(conn);
                match dialer {
                    Proc::Server(i) => self.servers[i].node.handle_connected(id, addr, now),
                    Proc::Client(i) => self.clients[i].core.handle_connected(id, addr, now),
                }
                self.drain(dialer)
            }
            Event::DialFailed { proc, addr } => {
                match proc {
                    Proc::Server(i) => self.servers[i].node.handle_dial_failed(addr, now),
                    Proc::Client(i) => self.clients[i].core.handle_dial_failed(addr, now),
                }
                self.drain(proc)
            }
            Event::Closed { conn, to } => {
                let side = self.side(conn, to);
                if !self.conns[conn].open[side] {
                    return Ok(());
                }
                self.conns[conn].open[side] = false;
                match to {
                    Proc::Server(i) => self.servers[i].node.handle_closed(conn_id(conn), now),
                    Proc::Client(i) => self.clients[i].core.handle_closed(conn_id(conn), now),
                }
                self.drain(to)
            }
            Event::Deliver { conn, to, payload } => {
                if !self.conns[conn].open[self.side(conn, to)] {
                    return Ok(());
                }
                let id = conn_id(conn);
                match (to, payload) {
                    (Proc::Server(i), Payload::Hello(hello)) => {
                        self.conns[conn].kind = Some(hello.link_kind());
                        self.servers[i].node.handle_hello(id, hello, now);
                    }
                    (Proc::Server(i), Payload::Client(msg)) => {
                        self.servers[i].node.handle_client_msg(id, msg, now)
                    }
                    (Proc::Server(i), Payload::Peer(msg)) => {
                        self.servers[i].node.handle_peer_msg(id, msg, now)
                    }
                    (Proc::Client(i), Payload::Server(msg)) => {
                        self.clients[i].core.handle_msg(id, msg, now)
                    }
                    (to, payload) => {
                        return Err(self.fail(format!("misrouted {payload:?} to {to:?}")));
                    }
                }
                self.drain(to)
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
        // Data already sent still arrives, then the close.
        let at = self.conns[c].last_arrival[side] + self.delay();
        let at = at.max(self.now);
        self.schedule(self.now, Event::Closed { conn: c, to: from });
        self.schedule(at, Event::Closed { conn: c, to: other });
    }

    fn dial(&mut self, from: Proc, addr: SocketAddr) {
        let at = self.now + self.delay();
        match self.servers.iter().position(|s| s.addr == addr) {
            Some(target) => {
                let conn = self.conns.len();
                self.conns.push(SimConn {
                    dialer: from,
                    acceptor: Proc::Server(target),
                    last_arrival: [at, at],
                    open: [true, true],
                    kind: None,
                });
                self.schedule(at, Event::Connected { conn });
            }
            None => self.schedule(at, Event::DialFailed { proc: from, addr }),
        }
    }

    /// Performs every output of `proc`, checking each log line as it is appended.
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
                Output::ToPeer(c, msg) => self.send(proc, c, Payload::Peer(msg)),
                Output::Status(_, _) => {}
                Output::Close(c, _) => self.close(proc, c),
                Output::SpawnBackup => {
                    let join = self.servers[i].addr;
                    self.add_server(StartRole::Backup { join });
                }
            }
        }
    }

    fn drain_client(&mut self, i: usize) -> Result<(), SimFailure> {
        let proc = Proc::Client(i);
        while let Some(out) = self.clients[i].core.poll_output() {
            match out {
                ClientOutput::Dial(addr) => self.dial(proc, addr),
                ClientOutput::Hello(c, hello) => self.send(proc, c, Payload::Hello(hello)),
                ClientOutput::Send(c, msg) => self.send(proc, c, Payload::Client(msg)),
                ClientOutput::Close(c) => self.close(proc, c),
                ClientOutput::Append(line) => {
                    self.clients[i].log.push(line);
                    if let Err(v) = self.live.observe(i, &format!("c{i}"), line) {
                        return Err(self.fail(v.to_string()));
                    }
                }
            }
        }
        Ok(())
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
