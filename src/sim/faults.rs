//! Faults: what the simulator does to the world. At random (a crash or pause of either
//! server, a client crash, a cut, a cold restart), only from a steady state, as the
//! assignment's fault model allows; or when a script asks (`super::script`).

use super::net::{Endpoint, Event, Proc};
use super::world::{SimClient, World};
use super::SimFailure;
use crate::proto::Role;
use std::time::Duration;

impl World {
    pub(super) fn is_paused(&self, i: usize) -> bool {
        self.servers[i].paused_until.is_some_and(|t| t > self.now)
    }

    pub(super) fn runnable(&self, i: usize) -> bool {
        self.servers[i].alive && !self.is_paused(i)
    }

    /// The acting primary and its installed, live backup, if the service is in that state.
    pub(super) fn healthy_pair(&self) -> Option<(usize, usize)> {
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
    pub(super) fn steady(&self) -> bool {
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

    pub(super) fn inject_fault(&mut self) -> Result<(), SimFailure> {
        if !self.steady() && !self.scenario.beyond_model {
            return Ok(());
        }
        let pair = self.healthy_pair();
        match self.rng.range(0, 5) {
            // The primary crashes or pauses, only while a live backup can take over.
            0 | 1 => {
                let Some((p, b)) = pair else {
                    return Ok(());
                };
                let (witnesses, members) = self.takeover_witnesses(p, b);
                if witnesses <= members / 2 && !self.scenario.beyond_model {
                    return Ok(());
                }
                if self.rng.chance(1, 2) {
                    self.crash_server(p, "primary");
                    if self.rng.chance(1, 4) {
                        self.crash_clients_during_takeover(witnesses, members);
                    }
                } else {
                    self.pause_server(p, "primary")?;
                }
            }
            // A backup (installed or joining) crashes or pauses.
            2 | 3 => {
                let candidates: Vec<usize> = (0..self.servers.len())
                    .filter(|&i| self.runnable(i) && !self.servers[i].node.is_acting_primary())
                    .collect();
                if candidates.is_empty() {
                    return Ok(());
                }
                let b = candidates[self.rng.range(0, candidates.len() as u64 - 1) as usize];
                if self.rng.chance(1, 2) {
                    self.crash_server(b, "backup");
                } else {
                    self.pause_server(b, "backup")?;
                }
            }
            // A client crashes and restarts from its log.
            _ => {
                let c = self.rng.range(0, self.clients.len() as u64 - 1) as usize;
                if self.clients[c].core.is_none() {
                    return Ok(());
                }
                self.crash_client(c);
            }
        }
        Ok(())
    }

    /// How many of the primary's members can witness a takeover by its backup `b`, and
    /// how many members there are (PROTOCOL.md §6, liveness); a primary crashes or pauses,
    /// within the fault model, only while the witnesses are a majority. A client finds `b`
    /// if the view it follows names it, or if its `--servers` or its promise file do (a
    /// crashed one dials them when it restarts); one gone for good never does. One that
    /// follows no view (down, or restarted and not yet told one) with a promise newer than
    /// the backup's view refuses the backup's base: it promised an unfinished proposal of
    /// the primary's (a client crash while an install waited for a cut backup's ack, seed
    /// 134229). Without such a majority this protocol installs no takeover: a client that
    /// restarts knowing only the dead primary (its `--servers` naming that one alone,
    /// against OPERATIONS.md's advice) beside one gone for good left the backup short of a
    /// majority (seed 177085 of a build with held lease renewals). Beyond the fault model
    /// the primary crashes regardless, and the run may stall.
    fn takeover_witnesses(&self, p: usize, b: usize) -> (usize, usize) {
        let members = self.servers[p].node.status(self.instant()).members;
        let base = self.servers[b].node.view().number;
        let backup = self.servers[b].addr;
        let witnesses_for_backup = |c: &&SimClient| {
            let follows = (c.core.as_ref()).and_then(|core| core.view());
            let finds_backup = follows.is_some_and(|v| v.backup == Some(backup))
                || c.servers.contains(&backup)
                || c.promised.servers.contains(&backup);
            let refuses_base = follows.is_none() && c.promised.view > base;
            !c.gone && finds_backup && !refuses_base
        };
        let witnesses = (members.iter())
            .filter_map(|m| m.id.0.strip_prefix('c')?.parse::<usize>().ok())
            .filter_map(|c| self.clients.get(c))
            .filter(witnesses_for_backup)
            .count();
        (witnesses, members.len())
    }

    /// Cuts some links (primary-backup, or a server from some clients; one way or both)
    /// and heals them after a while.
    pub(super) fn partition(&mut self) {
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
        // Sometimes a client cut off restarts while cut (say, while a majority of them
        // cannot reach the primary): it must adopt no view older than its promise.
        let cut_client = pairs.iter().find_map(|&(a, b)| match (a, b) {
            (Endpoint::Client(c), _) | (_, Endpoint::Client(c)) => Some(c),
            _ => None,
        });
        let restart = cut_client.filter(|&c| self.clients[c].core.is_some());
        for (from, to) in pairs {
            self.cuts.insert((from, to));
            self.schedule(
                self.now + Duration::from_millis(ms),
                Event::Heal { from, to },
            );
        }
        if let Some(c) = restart.filter(|_| self.rng.chance(1, 2)) {
            self.crash_client(c);
        }
    }

    /// Both servers die at once; a fresh primary starts later on the first address and
    /// rebuilds the results from the clients' logs.
    pub(super) fn cold_restart(&mut self) {
        self.cold_restart_pending = false;
        self.faults_left += 1;
        self.note_fault("cold-restart: every server killed".to_string());
        for i in 0..self.servers.len() {
            self.kill_server(i, true);
        }
        let ms = self.rng.range(0, 1000);
        self.schedule(self.now + Duration::from_millis(ms), Event::ColdStart);
    }

    pub(super) fn note_fault(&mut self, what: String) {
        self.faults_left = self.faults_left.saturating_sub(1);
        self.faults_done += 1;
        log::warn!("sim-fault t_ms={} {what}", self.now.as_millis());
    }

    pub(super) fn crash_server(&mut self, i: usize, what: &str) {
        self.note_fault(format!("crash {what} server={}", self.servers[i].addr));
        self.kill_server(i, true);
    }

    /// The process is gone: its connections close, its parent hears SIGCHLD. A SIGKILL
    /// (`crash`) also loses some of what it had not written yet; an exit flushed first.
    pub(super) fn kill_server(&mut self, i: usize, crash: bool) {
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

    pub(super) fn pause_server(&mut self, i: usize, what: &str) -> Result<(), SimFailure> {
        self.finish_turn(i)?;
        let peer_timeout = self.scenario.heartbeat * self.scenario.miss_limit;
        let ms = self.rng.range(1, 3 * peer_timeout.as_millis() as u64);
        self.stop_for(i, what, Duration::from_millis(ms));
        Ok(())
    }

    /// A process is stopped between two turns: the one under way is finished first.
    pub(super) fn finish_turn(&mut self, i: usize) -> Result<(), SimFailure> {
        if self.undrained.is_some_and(|(u, _)| u == i) {
            self.undrained = None;
            self.drain_server(i)?;
        }
        Ok(())
    }

    /// SIGSTOP now, SIGCONT after `pause`.
    pub(super) fn stop_for(&mut self, i: usize, what: &str, pause: Duration) {
        self.note_fault(format!(
            "pause {what} server={} for_ms={}",
            self.servers[i].addr,
            pause.as_millis()
        ));
        self.servers[i].paused_until = Some(self.now + pause);
    }

    /// Client `c`, whose leave was agreed, exits for good (`client-left`, exit 0).
    pub(super) fn exit_client(&mut self, c: usize) {
        log::warn!("sim-exit client=c{c} t_ms={}", self.now.as_millis());
        self.clients[c].core = None;
        self.clients[c].gone = true;
        self.clients[c].incarnation += 1;
        self.close_all(Proc::Client(c));
    }

    /// Clients crash while the backup takes over, each at its own moment within two peer
    /// timeouts: some after they promised its proposal and before it installed (they
    /// restart with that promise and follow no view). A restarted client that promised a
    /// proposal of the dead primary's that never installed can help no takeover built on
    /// an older view (A5: it missed the `NewView` it would have needed): within the fault
    /// model one client, while a majority of `members` is left without it among the
    /// `witnesses` the takeover had and no client is gone for good; beyond it, a majority
    /// of the clients.
    fn crash_clients_during_takeover(&mut self, witnesses: usize, members: usize) {
        let window = (self.scenario.heartbeat * self.scenario.miss_limit * 2).as_millis() as u64;
        let crashing = if self.scenario.beyond_model {
            self.clients.len() / 2 + 1
        } else if witnesses > members / 2 + 1 && self.scenario.gone_for_good.is_none() {
            1
        } else {
            0
        };
        for client in 0..crashing {
            let at = self.now + Duration::from_millis(self.rng.range(1, window.max(2)));
            self.schedule(at, Event::ClientCrash { client });
        }
    }

    pub(super) fn crash_client(&mut self, c: usize) {
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
    pub(super) fn ends_of(&self, proc: Proc) -> Vec<(usize, usize)> {
        (0..self.conns.len())
            .filter(|&c| self.conns[c].dialer == proc || self.conns[c].acceptor == proc)
            .map(|c| (c, self.side(c, proc)))
            .collect()
    }

    /// On each connection of `proc`, a random suffix of what it sent and has not arrived
    /// yet is lost.
    pub(super) fn lose_unwritten(&mut self, proc: Proc) {
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
    pub(super) fn close_all(&mut self, proc: Proc) {
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
}
