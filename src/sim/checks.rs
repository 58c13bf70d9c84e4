//! What the simulator checks: after every input, the invariants of the process that took
//! it; after every step, G4 (one primary per view number, and never two in charge at
//! once); as each log line is appended, G1-G3 (`check::LiveCheck`); at the end, G5 (every
//! client logged every ballot) and the batch checker.

use super::net::Proc;
use super::world::World;
use super::SimFailure;
use crate::check::{self, ClientLog, Expect};
use crate::proto::Role;
use std::net::SocketAddr;

impl World {
    pub(super) fn fail(&self, what: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            step: self.step,
            at_ms: self.now.as_millis() as u64,
            what,
        }
    }

    pub(super) fn check_one_primary_per_view(&mut self) -> Result<(), SimFailure> {
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

    pub(super) fn final_check(&self) -> Result<(), SimFailure> {
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
                // A stalled run's logs stop short; they must still be exact and agree.
                ballots: (!self.stalled).then_some(self.scenario.ballots),
                voters: None,
                electorates: self.live.electorates(),
                left: (0..self.clients.len())
                    // A forgotten log is empty: it stops short like a leaver's.
                    .filter(|&i| self.clients[i].gone || self.clients[i].forgotten)
                    .map(|i| format!("c{i}"))
                    .collect(),
            },
        );
        match violations.first() {
            None => Ok(()),
            Some(v) => Err(self.fail(v.to_string())),
        }
    }

    /// The invariants of `proc`, which has just taken an input.
    pub(super) fn check_invariants(&mut self, proc: Proc) -> Result<(), SimFailure> {
        let broken = match proc {
            Proc::Server(i) => self.servers[i]
                .node
                .invariants()
                .err()
                .map(|b| format!("server {}: {b}", self.servers[i].addr)),
            Proc::Client(i) => self.clients[i]
                .core
                .as_ref()
                .and_then(|c| c.invariants().err())
                .map(|b| format!("client c{i}: {b}")),
        };
        if let Some(what) = broken {
            return Err(self.fail(format!("invariant broken: {what}")));
        }
        if let Proc::Server(i) = proc {
            self.note_electorates(i)?;
        }
        Ok(())
    }

    /// The electorates of ballots server `i` holds open that the checker has not seen
    /// yet: G3 counts each ballot's votes over its own electorate. A copy that survives
    /// its server (a backup's, or a primary's in a view without a backup) is lasting; a
    /// primary's with a backup is not: if the backup never heard of the ballot it dies
    /// with the primary (no result left before the backup acknowledged it), and the
    /// successor opens that seq afresh with the members of its own view.
    fn note_electorates(&mut self, i: usize) -> Result<(), SimFailure> {
        let node = &self.servers[i].node;
        if node.has_exited() {
            return Ok(());
        }
        let lasting = match node.role() {
            Role::Backup => true,
            Role::Primary => node.view().backup.is_none(),
            Role::Joining => return Ok(()),
        };
        let known = self.live.electorates_known(lasting);
        if node.next_seq().0 <= known.0 + 1 {
            return Ok(());
        }
        for (seq, names) in node.electorates_after(known) {
            let voters: Vec<usize> = names
                .iter()
                .filter_map(|id| id.0.strip_prefix('c')?.parse().ok())
                .collect();
            if let Err(v) = self.live.electorate(seq, voters, lasting) {
                return Err(self.fail(v.to_string()));
            }
        }
        Ok(())
    }

    /// A failure caught as a panic knows no step: it is this world's current one.
    pub(super) fn at_panic(&self, failure: SimFailure) -> SimFailure {
        if failure.step != 0 {
            return failure;
        }
        self.fail(failure.what)
    }

    /// G5: the run took too long. Says where every process stands.
    pub(super) fn no_progress(&self) -> SimFailure {
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
        self.fail(format!(
            "G5: no progress: logs hold {logged:?} of {} ballots; servers {servers:#?}; clients {clients:#?}",
            self.scenario.ballots
        ))
    }
}
