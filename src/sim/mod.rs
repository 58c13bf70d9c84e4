//! The deterministic simulator: the real [`Node`] and [`Client`] cores on a simulated
//! network and clock, driven by one seed. Every link delivers in order (as TCP does) after
//! a random delay. Faults arrive at random: a server crashes (SIGKILL: its connections
//! close, its parent hears SIGCHLD) or pauses (SIGSTOP: it hears nothing and does nothing
//! until it resumes); a client crashes and restarts from its log. The model of the
//! assignment holds: the primary fails only while an installed backup is alive.
//!
//! After every input, the invariants of the process that took it; after every step, G4
//! (one primary per view number); G1-G3 on every log line appended. At the end: G5 (every
//! client logged every ballot) and the batch checker. A failure, a panic included, names
//! its seed; `pbvote sim --seed N` replays it with full logs.

//!
//! | file | owns |
//! |---|---|
//! | `world.rs` | the processes, the step loop, [`World::apply`]: the one place a core takes an input |
//! | `net.rs` | connections, events in time order, delivery, cuts; one handler per event |
//! | `faults.rs` | crashes, pauses, cuts, cold restarts: at random, or when a script asks |
//! | `checks.rs` | invariants after every input, G4 after every step, G1-G3 as logs grow, G5 |
//! | `script.rs` | [`Sim`]: a scripted run for scenario tests (`crash`, `pause`, `cut`, `run_until`) |

mod checks;
mod faults;
mod net;
mod rng;
mod script;
mod world;

use crate::client::policy::Policy;
pub use net::Endpoint;
pub use rng::Rng;
pub use script::{Setup, Sim};
use std::fmt;
use std::time::Duration;
use world::World;

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
    /// Outside the fault model (A4): a fault may strike before the service settled from
    /// the one before. Such a run must stay safe (G1-G4); it may stall, and a stall (no
    /// result for [`world::STALL_AFTER`]) ends it without failing.
    pub beyond_model: bool,
    /// Network partitions in the run: links cut (one way or both) and healed later.
    pub partitions: u32,
    /// Clients start knowing only the first primary's address (`--servers` naming one
    /// server), not both: they find every other server through the views they accept.
    pub one_server_known: bool,
    /// Clients that start later, while ballots run (their policies follow the first
    /// `clients` ones in `policies`): they join the membership.
    pub late_clients: usize,
    /// `--absent-after-ms` of every server (`None`: off).
    pub absent_after: Option<Duration>,
    /// A client that leaves (as at `--until`, or on SIGTERM) part-way and exits.
    pub leaver: Option<usize>,
    /// A client SIGKILLed for good part-way, which an operator then removes.
    pub gone_for_good: Option<usize>,
    /// The first backup is started by hand (`pbvote server --role backup`), nobody's
    /// child: the primary's spawn finds its address taken, and a replacement spawned
    /// after a cut cannot kill it, so a stale backup survives the cut.
    pub hand_started_backup: bool,
}

impl Scenario {
    pub fn from_seed(rng: &mut Rng) -> Scenario {
        let clients = rng.range(1, 7) as usize;
        let late_clients = if rng.chance(1, 3) {
            rng.range(1, 2) as usize
        } else {
            0
        };
        let policies = (0..clients + late_clients)
            .map(|i| match rng.range(0, 2) {
                0 => Policy::Yes,
                1 => Policy::No,
                _ => Policy::Random {
                    seed: rng.next_u64() ^ i as u64,
                },
            })
            .collect();
        // One that leaves needs another to stay; one that dies for good needs a majority of
        // the others alive to remove it.
        let leaver = (clients >= 2 && rng.chance(1, 4)).then_some(0);
        let gone_for_good = (clients >= 3 + usize::from(leaver.is_some()) && rng.chance(1, 6))
            .then_some(clients - 1);
        let cold_restart = rng.chance(1, 6);
        // Some histories longer than a cold restart's tail (MAX_RECOVERY_TAIL).
        let ballots = if rng.chance(1, 10) {
            rng.range(65, 150)
        } else {
            rng.range(3, 40)
        };
        let beyond_model = rng.chance(1, 8);
        Scenario {
            clients,
            ballots,
            beyond_model,
            window: rng.range(1, 4),
            heartbeat: Duration::from_millis(rng.range(20, 200)),
            miss_limit: rng.range(2, 6) as u32,
            backup_start_delay: Duration::from_millis(rng.range(0, 500)),
            ballot_interval: Duration::from_millis(rng.range(5, 60)),
            max_delay: Duration::from_millis(rng.range(0, 30)),
            policies,
            faults: rng.range(0, 6) as u32,
            cold_restart,
            partitions: if rng.chance(1, 2) {
                rng.range(1, 4) as u32
            } else {
                0
            },
            one_server_known: rng.chance(1, 2),
            late_clients,
            absent_after: None,
            // One that leaves needs another to stay; one that dies for good needs two more,
            // whose majority removes it.
            leaver,
            gone_for_good,
            // Drawn last: the seeds before it keep their other draws.
            hand_started_backup: rng.chance(1, 6),
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
    /// A run beyond the fault model that stalled (safely).
    pub stalled: bool,
    /// Clients refused for good (`results-unavailable`: they joined after a cold
    /// restart that rebuilt only the tail of a longer history).
    pub refused: u32,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clients, {} ballots, {} faults, {} steps, {} virtual ms{}",
            self.clients,
            self.ballots,
            self.faults,
            self.steps,
            self.virtual_ms,
            if self.stalled {
                " (beyond the fault model: stalled, safely)"
            } else {
                ""
            }
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
    /// Runs beyond the fault model that stalled, safely.
    pub stalled: u64,
    /// Clients refused for good (`results-unavailable`).
    pub refused: u64,
    pub first_failure: Option<SimFailure>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs, {} failed, {} ballots, {} faults, {} steps, {} stalled beyond the fault \
             model, {} clients refused as results-unavailable",
            self.runs,
            self.failures,
            self.ballots,
            self.faults,
            self.steps,
            self.stalled,
            self.refused
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
                summary.stalled += u64::from(report.stalled);
                summary.refused += u64::from(report.refused);
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
    let mut world = catching_panics(seed, || {
        let mut rng = Rng::new(seed);
        let scenario = Scenario::from_seed(&mut rng);
        World::new(seed, rng, scenario)
    })?;
    catching_panics(seed, || world.run()).map_err(|failure| world.at_panic(failure))
}

/// Runs `run`; a panic in it (a core's assertion, a debug build's invariant check) is a
/// failure of `seed` like any other, so that it names the seed that replays it.
fn catching_panics<T>(
    seed: u64,
    run: impl FnOnce() -> Result<T, SimFailure>,
) -> Result<T, SimFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(SimFailure {
            seed,
            step: 0,
            at_ms: 0,
            what: format!("panicked: {what}"),
        })
    })
}
