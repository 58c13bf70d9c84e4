//! The simulated world: the processes (real [`Node`] and [`Client`] cores), the loop that
//! advances virtual time to the next event or timer, and the one place where a process
//! takes an input ([`World::apply`]), after which its invariants are checked.

use super::net::{Endpoint, Event, LinkBreak, Payload, Proc, SimConn};
use super::rng::Rng;
use super::{Report, Scenario, SimFailure};
use crate::ballot_log::{LogEnd, LogLine};
use crate::check::LiveCheck;
use crate::client::policy::Policy;
use crate::client::{Client, ClientConfig, ClientOutput, Promised};
use crate::link::ConnId;
use crate::node::{Node, NodeConfig, Output, StartRole, StepDown};
use crate::proto::{ClientId, NodeId, Seq};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Virtual time the run may take before a lack of progress is a G5 failure.
pub(super) const TIME_LIMIT: Duration = Duration::from_secs(600);
pub(super) const STEP_LIMIT: u64 = 2_000_000;
/// A run beyond the fault model with no new result for this long has stalled.
pub(super) const STALL_AFTER: Duration = Duration::from_secs(30);
/// Chance per step that a fault strikes, out of 10,000 (while the run has faults left).
pub(super) const FAULT_CHANCE: u64 = 40;

/// One input to one process.
pub(super) enum Input {
    Connected(ConnId, SocketAddr),
    DialFailed(SocketAddr),
    Closed(ConnId),
    Frame(ConnId, Payload),
    ChildExited,
    Timeout,
}

pub(super) struct SimServer {
    pub(super) node: Node,
    pub(super) addr: SocketAddr,
    /// Where it spawns its backup: the spawner's own address, so the pair keeps swapping
    /// between the two addresses clients know (as `pbvote server` does).
    pub(super) backup_listen: SocketAddr,
    pub(super) alive: bool,
    /// SIGSTOPped until then.
    pub(super) paused_until: Option<Duration>,
    pub(super) parent: Option<usize>,
    /// The backup it spawned last, if that still runs.
    pub(super) child: Option<usize>,
    /// Why it exited, if it stepped down.
    pub(super) stepped_down: Option<StepDown>,
}

pub(super) struct SimClient {
    /// `None` while crashed.
    pub(super) core: Option<Client>,
    pub(super) log: Vec<LogLine>,
    /// Where a restart looks for servers (as a real client's `--servers`).
    pub(super) servers: Vec<SocketAddr>,
    /// Bumped at each crash so the dead incarnation's connections are ignored.
    pub(super) incarnation: u32,
    /// What the client persisted of its promises (its `.view` file): the number and the
    /// servers of the view it was made to.
    pub(super) promised: Promised,
    /// It left the membership and exited for good: its log may stop short.
    pub(super) gone: bool,
    /// Removed while a cold restart recovered: its log left the checks (see
    /// `operator_removes`).
    pub(super) forgotten: bool,
}

pub struct World {
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) scenario: Scenario,
    pub(super) base: Instant,
    pub(super) now: Duration,
    pub(super) step: u64,
    pub(super) servers: Vec<SimServer>,
    pub(super) clients: Vec<SimClient>,
    pub(super) conns: Vec<SimConn>,
    pub(super) queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    pub(super) events: Vec<Option<Event>>,
    pub(super) live: LiveCheck,
    pub(super) faults_left: u32,
    pub(super) faults_done: u32,
    /// G4: which server acted as primary in each view number.
    pub(super) primaries: BTreeMap<u64, usize>,
    /// The two addresses the cluster starts on; a cold restart reuses the first.
    pub(super) addrs: (SocketAddr, SocketAddr),
    pub(super) cold_restart_pending: bool,
    /// When a client last logged a result (a stall beyond the fault model is timed from
    /// it), and whether the run ended so.
    pub(super) last_result: Duration,
    pub(super) stalled: bool,
    /// Clients refused for good so far.
    pub(super) refused: u32,
    /// Directed cuts in force: nothing from the first reaches the second.
    pub(super) cuts: BTreeSet<(Endpoint, Endpoint)>,
    /// Per (connection, sending side), what arrived at a cut, in order, for after it heals.
    pub(super) held: BTreeMap<(usize, usize), VecDeque<Event>>,
    pub(super) partitions_left: u32,
    /// A server that took a message and has not yet performed its outputs, and when its
    /// turn began: a host reads all that is ready before it writes, so the outputs of
    /// several inputs may wait for one loop turn's end (and messages that ride together
    /// join in the node's queue).
    pub(super) undrained: Option<(usize, Duration)>,
    /// A script's request: the link of the next frame this matches breaks with it in
    /// flight (see `Sim::break_link_on`).
    pub(super) break_on: Option<LinkBreak>,
}

/// The longest loop turn the simulator models: a message arriving this soon after the
/// turn began may be read in it.
pub(super) const TURN: Duration = Duration::from_millis(1);

impl World {
    pub(super) fn new(seed: u64, rng: Rng, scenario: Scenario) -> Result<World, SimFailure> {
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
            last_result: Duration::ZERO,
            stalled: false,
            refused: 0,
            cuts: BTreeSet::new(),
            held: BTreeMap::new(),
            partitions_left: scenario.partitions,
            undrained: None,
            break_on: None,
            scenario,
        };
        let (p_addr, b_addr) = world.addrs;
        if world.scenario.hand_started_backup {
            let join = StartRole::Backup { join: p_addr };
            world.add_server(join, b_addr, p_addr, None)?;
        }
        world.add_server(StartRole::Primary, p_addr, b_addr, None)?;
        let known = if world.scenario.one_server_known {
            vec![p_addr]
        } else {
            vec![p_addr, b_addr]
        };
        for _ in 0..world.scenario.policies.len() {
            world.clients.push(SimClient {
                core: None,
                log: Vec::new(),
                servers: known.clone(),
                incarnation: 0,
                promised: Promised::default(),
                gone: false,
                forgotten: false,
            });
        }
        for i in 0..world.scenario.clients {
            world.start_client(i)?;
        }
        // The late ones start while the first ballots run; the leaver and the one gone for
        // good go while they run.
        let span = world.scenario.ballot_interval.as_millis() as u64 * world.scenario.ballots;
        for client in world.scenario.clients..world.clients.len() {
            let at = Duration::from_millis(world.rng.range(0, span));
            world.schedule(at, Event::ClientStart { client });
        }
        if let Some(client) = world.scenario.leaver {
            let at = Duration::from_millis(world.rng.range(span / 4, span));
            world.schedule(at, Event::ClientLeave { client });
        }
        if let Some(client) = world.scenario.gone_for_good {
            let at = Duration::from_millis(world.rng.range(span / 4, span));
            world.schedule(at, Event::ClientGone { client });
        }
        Ok(world)
    }

    pub(super) fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// A new client, `c<i>`, starts now knowing both first addresses; returns `i`.
    pub(super) fn add_client(&mut self, policy: Policy) -> Result<usize, SimFailure> {
        let (p, b) = self.addrs;
        self.clients.push(SimClient {
            core: None,
            log: Vec::new(),
            servers: vec![p, b],
            incarnation: 0,
            promised: Promised::default(),
            gone: false,
            forgotten: false,
        });
        self.scenario.policies.push(policy);
        let i = self.live.add_log(policy);
        debug_assert_eq!(i, self.clients.len() - 1);
        self.start_client(i)?;
        self.drain(Proc::Client(i))?;
        Ok(i)
    }

    /// Starts client `i` (again) from what its log and promise file hold.
    pub(super) fn start_client(&mut self, i: usize) -> Result<(), SimFailure> {
        let cfg = ClientConfig {
            id: ClientId(format!("c{i}")),
            servers: self.clients[i].servers.clone(),
            policy: self.scenario.policies[i],
            until: Some(Seq(self.scenario.ballots)),
            redial: Duration::from_millis(100),
        };
        let core = Client::new(
            cfg,
            LogEnd::of(&self.clients[i].log),
            &self.clients[i].promised,
            self.instant(),
        );
        self.clients[i].core = Some(core);
        self.apply(Proc::Client(i), Input::Timeout)
    }

    /// Starts a server process; returns its index.
    pub(super) fn add_server(
        &mut self,
        start: StartRole,
        addr: SocketAddr,
        backup_listen: SocketAddr,
        parent: Option<usize>,
    ) -> Result<usize, SimFailure> {
        // Every server there was is dead: a cold restart. What the dead ones held of
        // ballots no client logged died with them, and the fresh primary, started with the
        // default flags, opens those seqs afresh.
        let cold = !self.servers.is_empty() && self.servers.iter().all(|s| !s.alive);
        if cold && matches!(start, StartRole::Primary) {
            self.live.cold_restart();
        }
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
            min_clients: if cold { 1 } else { s.clients },
            window: s.window,
            spawn_backup: true,
            absent_after: s.absent_after,
        };
        if let Err(e) = cfg.validate() {
            return Err(self.fail(format!("the scenario's server config is invalid: {e}")));
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
            stepped_down: None,
        });
        let idx = self.servers.len() - 1;
        self.drain_server(idx)?;
        Ok(idx)
    }

    /// Every client still there logged every ballot.
    pub(super) fn done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.gone || c.log.len() as u64 >= self.scenario.ballots)
    }

    pub(super) fn run(&mut self) -> Result<Report, SimFailure> {
        self.start()?;
        while !self.done() {
            if self.scenario.beyond_model && self.now > self.last_result + STALL_AFTER {
                self.stalled = true;
                break;
            }
            self.step()?;
        }
        self.final_check()?;
        Ok(self.report())
    }

    /// What the clients' first turn queued goes out.
    pub(super) fn start(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.clients.len() {
            self.drain(Proc::Client(i))?;
        }
        Ok(())
    }

    pub(super) fn report(&self) -> Report {
        Report {
            steps: self.step,
            clients: self.clients.len(),
            ballots: self.scenario.ballots,
            faults: self.faults_done,
            virtual_ms: self.now.as_millis() as u64,
            stalled: self.stalled,
            refused: self.refused,
        }
    }

    /// One step: maybe a random fault, then the next event or timer, then the checks.
    pub(super) fn step(&mut self) -> Result<(), SimFailure> {
        self.step += 1;
        if self.now > TIME_LIMIT || self.step > STEP_LIMIT {
            return Err(self.no_progress());
        }
        if self.faults_left > 0 && self.rng.chance(FAULT_CHANCE, 10_000) {
            self.inject_fault()?;
        }
        // Not while a cut is in force: a fresh primary cut from the clients for its whole
        // first-ballot wait breaks what a cold restart assumes (PROTOCOL.md A2; seed 120067).
        let uncut = self.cuts.is_empty();
        if self.cold_restart_pending && uncut && self.steady() && self.rng.chance(5, 10_000) {
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
        self.check_one_primary_per_view()
    }

    /// Advances to the earliest event or timer and performs it.
    fn step_once(&mut self) -> Result<(), SimFailure> {
        if let Some((i, began)) = self.undrained.take() {
            if !self.next_event_delivers_to(Proc::Server(i), began) {
                return self.drain_server(i);
            }
            self.undrained = Some((i, began));
        }
        let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
        match (next_event, self.next_timer()) {
            (Some(te), Some((tt, _))) if te <= tt => self.pop_event(),
            (Some(_), None) => self.pop_event(),
            (_, Some((tt, proc))) => {
                self.now = self.now.max(tt);
                self.apply(proc, Input::Timeout)?;
                self.drain(proc)
            }
            (None, None) => Err(self.fail("G5: nothing left to happen".to_string())),
        }
    }

    /// The earliest timer of any process, and whose.
    fn next_timer(&self) -> Option<(Duration, Proc)> {
        let mut next: Option<(Duration, Proc)> = None;
        for (i, s) in self.servers.iter().enumerate() {
            if !s.alive {
                continue;
            }
            if let Some(t) = s.node.poll_timeout() {
                // A paused process's timers fire when it resumes.
                let mut at = t.saturating_duration_since(self.base);
                if let Some(until) = s.paused_until {
                    at = at.max(until);
                }
                if next.is_none_or(|(nt, _)| at < nt) {
                    next = Some((at, Proc::Server(i)));
                }
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(t) = c.core.as_ref().and_then(|c| c.poll_timeout()) {
                let at = t.saturating_duration_since(self.base);
                if next.is_none_or(|(nt, _)| at < nt) {
                    next = Some((at, Proc::Client(i)));
                }
            }
        }
        next
    }

    /// `proc` takes `input` now; then its invariants must hold.
    pub(super) fn apply(&mut self, proc: Proc, input: Input) -> Result<(), SimFailure> {
        let now = self.instant();
        match proc {
            Proc::Server(i) => {
                let node = &mut self.servers[i].node;
                match input {
                    Input::Connected(c, addr) => node.handle_connected(c, addr, now),
                    Input::DialFailed(addr) => node.handle_dial_failed(addr, now),
                    Input::Closed(c) => node.handle_closed(c, now),
                    Input::Frame(c, Payload::Hello(hello)) => node.handle_hello(c, hello, now),
                    Input::Frame(c, Payload::Client(msg)) => node.handle_client_msg(c, msg, now),
                    Input::Frame(c, Payload::Peer(msg)) => node.handle_peer_msg(c, msg, now),
                    Input::Frame(_, payload @ Payload::Server(_)) => {
                        return Err(self.fail(format!("misrouted {payload:?} to {proc:?}")));
                    }
                    Input::ChildExited => node.handle_child_exit(now),
                    Input::Timeout => node.handle_timeout(now),
                }
            }
            Proc::Client(i) => {
                let Some(core) = &mut self.clients[i].core else {
                    return Ok(());
                };
                match input {
                    Input::Connected(c, addr) => core.handle_connected(c, addr, now),
                    Input::DialFailed(addr) => core.handle_dial_failed(addr, now),
                    Input::Closed(c) => core.handle_closed(c, now),
                    Input::Frame(c, Payload::Server(msg)) => core.handle_msg(c, msg, now),
                    Input::Frame(_, payload) => {
                        return Err(self.fail(format!("misrouted {payload:?} to {proc:?}")));
                    }
                    Input::ChildExited => {}
                    Input::Timeout => core.handle_timeout(now),
                }
            }
        }
        self.check_invariants(proc)
    }

    pub(super) fn drain(&mut self, proc: Proc) -> Result<(), SimFailure> {
        match proc {
            Proc::Server(i) => self.drain_server(i),
            Proc::Client(i) => self.drain_client(i),
        }
    }

    /// Performs every output of a server.
    pub(super) fn drain_server(&mut self, i: usize) -> Result<(), SimFailure> {
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
                Output::Status(_, _) | Output::Removed(_, _) => {}
                Output::Close(c, _) => self.close(proc, c),
                Output::SpawnBackup => self.spawn_backup_of(i)?,
                Output::Exit(reason) => {
                    self.servers[i].stepped_down = Some(reason);
                    self.kill_server(i, false);
                    return Ok(());
                }
                // Delivery is modelled per message; a connection's buffer is never full.
                Output::WhenDrained(c) => {
                    self.servers[i].node.handle_drained(c);
                    self.check_invariants(proc)?;
                }
            }
        }
        Ok(())
    }

    /// Server `i` fork/execs a backup on its `backup_listen`, killing the one it spawned
    /// before if that still runs.
    fn spawn_backup_of(&mut self, i: usize) -> Result<(), SimFailure> {
        if let Some(old) = self.servers[i].child.take() {
            self.kill_server(old, true);
        }
        let (join, listen) = (self.servers[i].addr, self.servers[i].backup_listen);
        if self.servers.iter().any(|s| s.alive && s.addr == listen) {
            // The port is taken (a stale server still runs there): the child fails to
            // bind and exits at once.
            log::warn!(
                "sim-spawn-failed addr={listen} reason=address-in-use t_ms={}",
                self.now.as_millis()
            );
            let at = self.now + self.delay();
            self.schedule(at, Event::ChildExited { parent: i });
            return Ok(());
        }
        let child = self.add_server(StartRole::Backup { join }, listen, join, Some(i))?;
        self.servers[i].child = Some(child);
        Ok(())
    }

    /// Performs every output of a client, checking each log line as it is appended.
    fn drain_client(&mut self, i: usize) -> Result<(), SimFailure> {
        let proc = Proc::Client(i);
        loop {
            let Some(out) = self.clients[i].core.as_mut().and_then(|c| c.poll_output()) else {
                if self.clients[i].core.as_ref().is_some_and(|c| c.has_left()) {
                    self.exit_client(i); // `client-left`, exit 0
                }
                return self.exit_if_refused(i);
            };
            match out {
                ClientOutput::Dial(addr) => self.dial(proc, addr),
                ClientOutput::Hello(c, hello) => self.send(proc, c, Payload::Hello(hello)),
                ClientOutput::Send(c, msg) => self.send(proc, c, Payload::Client(msg)),
                ClientOutput::Close(c) => self.close(proc, c),
                ClientOutput::Promise(promised) => self.clients[i].promised = promised,
                ClientOutput::Append(line) => {
                    self.last_result = self.now;
                    self.clients[i].log.push(line);
                    if let Err(v) = self.live.observe(i, &format!("c{i}"), line) {
                        return Err(self.fail(v.to_string()));
                    }
                }
            }
            if self.clients[i].core.as_ref().is_some_and(|c| c.has_left()) {
                // `client-left`, exit 0: what it queued is written first.
                while let Some(out) = self.clients[i].core.as_mut().and_then(|c| c.poll_output()) {
                    if let ClientOutput::Send(c, msg) = out {
                        self.send(proc, c, Payload::Client(msg));
                    }
                }
                self.exit_client(i);
                return Ok(());
            }
        }
    }

    /// A client refused for good exits 1, as `pbvote client` does. The one refusal the
    /// fault model reaches: a log that lacks results no server holds (a client that
    /// joins after a cold restart rebuilt only the tail); the server removes such a
    /// member by itself. Any other (`client-ahead`) means the servers lost a result.
    fn exit_if_refused(&mut self, i: usize) -> Result<(), SimFailure> {
        let refused = self.clients[i].core.as_ref().and_then(|c| c.refused());
        let Some(why) = refused.map(str::to_string) else {
            return Ok(());
        };
        log::warn!(
            "sim-refused client=c{i} t_ms={} reason={why}",
            self.now.as_millis()
        );
        if !why.starts_with("results-unavailable") {
            return Err(self.fail(format!("c{i} refused: {why}")));
        }
        self.live.removed(i);
        self.refused += 1;
        self.exit_client(i);
        Ok(())
    }

    /// An operator runs `remove-client` against the acting primary (the answer is not
    /// modelled); with none acting now, later.
    pub(super) fn operator_removes(&mut self, client: usize) -> Result<(), SimFailure> {
        // A fresh primary still recovering from a cold restart takes it too.
        let primary = (0..self.servers.len()).find(|&i| {
            let node = &self.servers[i].node;
            self.runnable(i) && (node.is_acting_primary() || node.is_recovering())
        });
        let Some(p) = primary else {
            let at = self.now + Duration::from_millis(100);
            self.schedule(at, Event::OperatorRemoves { client });
            return Ok(());
        };
        log::warn!("sim-remove client=c{client} t_ms={}", self.now.as_millis());
        self.live.removed(client);
        if self.servers[p].node.is_recovering() && !self.clients[client].log.is_empty() {
            // Removed while a cold restart recovers: the operator gives up what only this
            // client logged (docs/PROTOCOL.md §9), so its log leaves the checks with it.
            log::warn!("sim-forget-log client=c{client}");
            self.clients[client].log.clear();
            let others: Vec<&[LogLine]> = (self.clients.iter())
                .enumerate()
                .filter(|&(i, c)| i != client && !c.forgotten)
                .map(|(_, c)| c.log.as_slice())
                .collect();
            self.live.forget(client, &others);
            self.clients[client].forgotten = true;
        }
        let admin = ConnId {
            slot: u32::MAX,
            gen: 0,
        };
        let hello = crate::proto::Hello::Remove {
            id: ClientId(format!("c{client}")),
        };
        let now = self.instant();
        self.servers[p].node.handle_hello(admin, hello, now);
        self.check_invariants(Proc::Server(p))?;
        self.drain(Proc::Server(p))?;
        // The operator checks, and asks again if a failover lost the request.
        let at = self.now + Duration::from_secs(1);
        self.schedule(at, Event::OperatorChecks { client });
        Ok(())
    }

    /// Whether the acting primary still counts on `client`; if so, ask again.
    pub(super) fn operator_checks(&mut self, client: usize) -> Result<(), SimFailure> {
        let id = ClientId(format!("c{client}"));
        let acting = (0..self.servers.len()).find(|&i| {
            let node = &self.servers[i].node;
            self.runnable(i) && (node.is_acting_primary() || node.is_recovering())
        });
        let counted = acting.is_none_or(|p| {
            let node = &self.servers[p].node;
            node.is_recovering() || node.waits_for(&id)
        });
        if counted {
            return self.operator_removes(client);
        }
        Ok(())
    }
}
