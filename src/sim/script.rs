//! A scripted simulation for scenario tests (as TigerBeetle's tests script their
//! simulator): the real cores on the simulated network with seeded delays, but no random
//! faults; the script injects them (`crash`, `pause`, `cut`, `break_link_on`, ...) and
//! waits for what it expects (`run_until`). Every check of a random run still applies
//! after every step: invariants, G4, G1-G3 as the logs grow, and G5 at `finish`.

use super::net::{Endpoint, Payload};
use super::rng::Rng;
use super::world::World;
use super::{Report, Scenario, SimFailure};
use crate::client::policy::Policy;
use crate::node::{Node, StartRole, StepDown};
use crate::proto::{PeerMsg, Role};
use std::net::SocketAddr;
use std::time::Duration;

/// The cluster a script starts with: a primary (which spawns its backup) and clients.
#[derive(Clone, Debug)]
pub struct Setup {
    /// One client per policy, named `c0`, `c1`, ...
    pub policies: Vec<Policy>,
    pub ballots: u64,
    pub window: u64,
    pub heartbeat: Duration,
    pub miss_limit: u32,
    pub backup_start_delay: Duration,
    pub ballot_interval: Duration,
    /// Each message takes 0..=this on the wire.
    pub max_delay: Duration,
    /// `--absent-after-ms` of every server.
    pub absent_after: Option<Duration>,
}

impl Default for Setup {
    /// Three yes and two no voters, 30 ballots one at a time, 50 ms heartbeats.
    fn default() -> Setup {
        Setup {
            policies: vec![
                Policy::Yes,
                Policy::Yes,
                Policy::Yes,
                Policy::No,
                Policy::No,
            ],
            ballots: 30,
            window: 1,
            heartbeat: Duration::from_millis(50),
            miss_limit: 3,
            backup_start_delay: Duration::from_millis(100),
            ballot_interval: Duration::from_millis(10),
            max_delay: Duration::from_millis(5),
            absent_after: None,
        }
    }
}

/// How long `run_until` waits, in virtual time, before the awaited never came.
const RUN_UNTIL_LIMIT: Duration = Duration::from_secs(120);

pub struct Sim {
    world: World,
}

impl Sim {
    pub fn new(seed: u64, setup: Setup) -> Result<Sim, SimFailure> {
        super::catching_panics(seed, || {
            let scenario = Scenario {
                clients: setup.policies.len(),
                ballots: setup.ballots,
                window: setup.window,
                heartbeat: setup.heartbeat,
                miss_limit: setup.miss_limit,
                backup_start_delay: setup.backup_start_delay,
                ballot_interval: setup.ballot_interval,
                max_delay: setup.max_delay,
                policies: setup.policies,
                faults: 0,
                cold_restart: false,
                beyond_model: false,
                partitions: 0,
                one_server_known: false,
                late_clients: 0,
                absent_after: setup.absent_after,
                leaver: None,
                gone_for_good: None,
                hand_started_backup: false,
            };
            let mut world = World::new(seed, Rng::new(seed), scenario)?;
            world.start()?;
            Ok(Sim { world })
        })
    }

    // ----- running ---------------------------------------------------------------------

    /// Steps until `cond` holds; a failure if any check breaks first, or if it has not
    /// held within two virtual minutes.
    pub fn run_until(&mut self, what: &str, cond: impl Fn(&Sim) -> bool) -> Result<(), SimFailure> {
        let seed = self.world.seed;
        let deadline = self.world.now + RUN_UNTIL_LIMIT;
        super::catching_panics(seed, || {
            while !cond(self) {
                if self.world.now > deadline {
                    return Err(self.world.fail(format!("never came: {what}")));
                }
                self.world.step()?;
            }
            Ok(())
        })
        .map_err(|failure| self.world.at_panic(failure))
    }

    /// Steps for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) -> Result<(), SimFailure> {
        let until = self.world.now + span;
        self.run_until("time passes", |sim| sim.world.now >= until)
    }

    /// Runs until every client logged every ballot, then the batch checker: G1-G3, G5.
    pub fn finish(mut self) -> Result<Report, SimFailure> {
        self.run_until("every client logs every ballot", |sim| sim.world.done())?;
        self.world.final_check()?;
        Ok(self.world.report())
    }

    // ----- who is who ------------------------------------------------------------------

    pub fn now(&self) -> Duration {
        self.world.now
    }

    /// Servers started so far, dead ones included (indexes never change).
    pub fn server_count(&self) -> usize {
        self.world.servers.len()
    }

    pub fn server(&self, i: usize) -> &Node {
        &self.world.servers[i].node
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.world.servers[i].addr
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.world.servers[i].alive
    }

    /// Why server `i` stepped down, if it did.
    pub fn stepped_down(&self, i: usize) -> Option<&StepDown> {
        self.world.servers[i].stepped_down.as_ref()
    }

    /// The live server acting as primary, if there is exactly one.
    pub fn primary(&self) -> Option<usize> {
        let mut acting = (0..self.server_count())
            .filter(|&i| self.is_alive(i) && self.server(i).is_acting_primary());
        let first = acting.next();
        first.filter(|_| acting.next().is_none())
    }

    /// The live, installed backup of the acting primary's view.
    pub fn backup(&self) -> Option<usize> {
        self.world.healthy_pair().map(|(_, b)| b)
    }

    /// The live servers in `role`.
    pub fn in_role(&self, role: Role) -> Vec<usize> {
        (0..self.server_count())
            .filter(|&i| self.is_alive(i) && self.server(i).role() == role)
            .collect()
    }

    /// Lines in the shortest client log.
    pub fn least_logged(&self) -> u64 {
        let logs = self.world.clients.iter().map(|c| c.log.len() as u64);
        logs.min().unwrap_or(0)
    }

    // ----- faults ----------------------------------------------------------------------

    /// SIGKILL server `i`: its connections close, unwritten output may be lost, its
    /// parent hears SIGCHLD.
    pub fn crash(&mut self, i: usize) {
        self.world.crash_server(i, "scripted");
    }

    /// SIGSTOP server `i` now, SIGCONT after `span`.
    pub fn pause(&mut self, i: usize, span: Duration) -> Result<(), SimFailure> {
        self.world.finish_turn(i)?;
        self.world.stop_for(i, "scripted", span);
        Ok(())
    }

    /// Both servers die at once (a cold restart follows with `start_primary`).
    pub fn crash_every_server(&mut self) {
        for i in 0..self.server_count() {
            self.world.kill_server(i, true);
        }
    }

    /// A new client starts now (`pbvote client` with both first addresses): it joins
    /// while ballots run. Returns its index (`c<i>`).
    pub fn add_client(&mut self, policy: Policy) -> Result<usize, SimFailure> {
        self.world.add_client(policy)
    }

    /// How many voters ballot `seq` counts, once a server has opened it.
    pub fn electorate_len(&self, seq: u64) -> Option<usize> {
        self.world.live.electorate_len(crate::proto::Seq(seq))
    }

    /// Lines in client `c`'s log.
    pub fn logged(&self, c: usize) -> u64 {
        self.world.clients[c].log.len() as u64
    }

    /// The highest view number client `c` has durably promised.
    pub fn promised(&self, c: usize) -> u64 {
        self.world.clients[c].promised.view.0
    }

    /// Client `c` asks to leave (`--until` reached, or SIGTERM).
    pub fn leave(&mut self, c: usize) -> Result<(), SimFailure> {
        let now = self.world.instant();
        if let Some(core) = &mut self.world.clients[c].core {
            core.leave(now);
        }
        self.world.drain(super::net::Proc::Client(c))
    }

    /// Client `c` was told `Left` (a client that is, exits then, as `pbvote client` does).
    pub fn has_left(&self, c: usize) -> bool {
        let client = &self.world.clients[c];
        client.gone || client.core.as_ref().is_some_and(|core| core.has_left())
    }

    /// How many clients were refused for good (`results-unavailable`) and exited.
    pub fn refused(&self) -> u32 {
        self.world.refused
    }

    /// Client `c` exits for good (after its leave, or as a one-off that never comes back).
    pub fn exit_client(&mut self, c: usize) {
        self.world.exit_client(c);
    }

    /// `pbvote remove-client --id c<c>`, asked of the acting primary: its answer is not
    /// modelled, its effect is (watch the electorates and the logs).
    pub fn remove_client(&mut self, c: usize) -> Result<(), SimFailure> {
        let Some(p) = self.primary() else {
            return Err(self.world.fail("remove-client: no acting primary".into()));
        };
        self.world.live.removed(c);
        let now = self.world.instant();
        // A connection the simulated network does not know: the answer goes nowhere.
        let admin = crate::link::ConnId {
            slot: u32::MAX,
            gen: 0,
        };
        let id = crate::proto::ClientId(format!("c{c}"));
        let hello = crate::proto::Hello::Remove { id };
        self.world.servers[p].node.handle_hello(admin, hello, now);
        self.world.drain(super::net::Proc::Server(p))
    }

    /// The servers are to remove client `c` by themselves (`--absent-after-ms`): the
    /// checker lets the ballots open then count without it.
    pub fn expect_removal(&mut self, c: usize) {
        self.world.live.removed(c);
    }

    /// SIGKILL client `c`; it restarts from its log after a short while.
    pub fn crash_client(&mut self, c: usize) {
        self.world.crash_client(c);
    }

    /// Nothing from `a` reaches `b`, nor from `b` `a`, until `heal`.
    pub fn cut(&mut self, a: Endpoint, b: Endpoint) {
        log::warn!(
            "sim-partition t_ms={} cuts={a:?}<->{b:?} scripted",
            self.world.now.as_millis()
        );
        self.world.cuts.insert((a, b));
        self.world.cuts.insert((b, a));
    }

    pub fn heal(&mut self, a: Endpoint, b: Endpoint) {
        self.world.heal(a, b);
        self.world.heal(b, a);
    }

    /// The link that carries the next peer message matching `pred` breaks with it in
    /// flight: the message is lost, and both ends see the connection close.
    pub fn break_link_on(&mut self, pred: impl Fn(&PeerMsg) -> bool + 'static) {
        self.world.break_on = Some(Box::new(move |payload| match payload {
            Payload::Peer(msg) => pred(msg),
            Payload::Hello(_) | Payload::Client(_) | Payload::Server(_) => false,
        }));
    }

    /// Whether a `break_link_on` still waits for its frame.
    pub fn break_pending(&self) -> bool {
        self.world.break_on.is_some()
    }

    /// A fresh `pbvote server --role primary` on the first address, knowing nothing.
    pub fn start_primary(&mut self) -> Result<usize, SimFailure> {
        let (primary, backup) = self.world.addrs;
        self.world
            .add_server(StartRole::Primary, primary, backup, None)
    }

    /// `pbvote server --role backup --join JOIN --listen LISTEN`, started by hand: nobody's
    /// child.
    pub fn start_backup(
        &mut self,
        join: SocketAddr,
        listen: SocketAddr,
    ) -> Result<usize, SimFailure> {
        self.world
            .add_server(StartRole::Backup { join }, listen, join, None)
    }
}
