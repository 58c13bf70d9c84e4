//! The primary's ballots: open, count, commit, publish, re-ask. A ballot closes only when
//! every voter of its electorate voted; a deadline re-asks the missing ones, never closes
//! it short. While a backup is in the view a result reaches clients only after the backup
//! acknowledged it (commit before telling), and only while we hold a majority's lease.

use super::ballot::{Ballot, BallotState, VoteOutcome};
use super::timers::Timer;
use super::Node;
use crate::link::ConnId;
use crate::proto::limits::MAX_FORWARD_BATCH;
use crate::proto::{PeerMsg, Seq, ServerMsg, Tally};
use log::{debug, info, warn};
use std::time::Instant;

impl Node {
    fn can_open(&self, now: Instant) -> bool {
        // While a view waits for its backup's InstallAck no ballot opens: the backup takes a
        // ballot's electorate from the view it has installed, and it may have installed the
        // new one already.
        let settled = self
            .role
            .primary()
            .is_some_and(|p| !p.is_recovering() && p.pending_install.is_none());
        self.holds_lease(now)
            && settled
            && self.enough_members()
            && (self.ballots.len() as u64) < self.cfg.window
            && self.cfg.ballots.is_none_or(|n| self.next_seq().0 <= n)
    }

    /// Ballot 1 waits for `--min-clients` registered clients, and for every one of them
    /// still there to be a member (no join pending); after that any member will do (members
    /// leave), but a view with none has nobody to vote.
    pub(super) fn enough_members(&self) -> bool {
        // Asked before every ballot opens: the O(clients) part only before ballot 1.
        let assembled = || {
            self.registry.len() >= self.cfg.min_clients
                && self.views.proposal.is_none()
                && self.joiners().is_empty()
        };
        !self.views.members.is_empty() && (self.next_seq() > Seq(1) || assembled())
    }

    /// Ballots open in groups: once half the window is free, the primary fills all of it.
    /// The ballots of one group then ride together in one frame per client, their votes
    /// come back in one frame, and they complete in the same turn, so the group stays
    /// together. Refilling one slot per result instead keeps the ballots staggered, and
    /// every socket carries one ballot per write (measured: ~1 ballot per loop turn).
    fn may_refill(&self, now: Instant) -> bool {
        let free = self.cfg.window.saturating_sub(self.ballots.len() as u64);
        self.can_open(now) && free >= self.cfg.window.div_ceil(2)
    }

    /// The earliest the next ballot may open: an interval after the last one, and not
    /// before [`super::role::Primary::first_ballot_at`].
    fn next_open_at(&self) -> Option<Instant> {
        let primary = self.role.primary()?;
        let spaced = primary.last_open.map(|t| t + self.cfg.ballot_interval);
        spaced.max(primary.first_ballot_at)
    }

    /// [`Timer::OpenBallot`] fired: open what the window and the interval allow.
    pub(super) fn open_ballots(&mut self, now: Instant) {
        if self.may_refill(now) {
            let first = self.next_seq();
            while self.can_open(now) && self.next_open_at().is_none_or(|t| t <= now) {
                self.open_one_ballot(now);
            }
            let count = self.next_seq().0.saturating_sub(first.0) as u32;
            if count > 0 {
                let request = ServerMsg::VoteRequest {
                    view: self.views.installed.number,
                    first,
                    count,
                };
                self.broadcast(request);
            }
        }
        self.arm_open_ballot(now);
    }

    /// Opens the next ballot; the caller asks the clients for the votes of all it opened.
    fn open_one_ballot(&mut self, now: Instant) {
        let seq = self.next_seq();
        let voters = self.views.members.len() as u32;
        let view = self.views.installed.number;
        info!("ballot-open seq={seq} voters={voters} view={view}");
        if let Some(peer) = &self.peer {
            self.out
                .send_peer(peer.conn, PeerMsg::Open { view, seq, voters });
        }
        self.ballots
            .push(Ballot::new(seq, &self.views.members, now));
        debug_assert!(self.ballots.len() as u64 <= self.cfg.window);
        self.timers
            .set_if_stopped(Timer::Reask, now + self.cfg.vote_timeout());
        if let Some(primary) = self.role.primary_mut() {
            primary.last_open = Some(now);
        }
    }

    /// Arms the ballot timer for the earliest moment the next ballot may open, if one may.
    pub(super) fn arm_open_ballot(&mut self, now: Instant) {
        if self.may_refill(now) {
            let at = self.next_open_at().map_or(now, |t| t.max(now));
            self.timers.set(Timer::OpenBallot, at);
        } else {
            self.timers.stop(Timer::OpenBallot);
        }
    }

    /// Counts `(client, seq, yes)` votes (one message's worth), then lets whatever they
    /// completed commit: once per message, not per vote, as each pass walks the ballots
    /// already committing.
    pub(super) fn count_votes(
        &mut self,
        votes: impl IntoIterator<Item = (u32, Seq, bool)>,
        now: Instant,
    ) {
        let mut counted = false;
        for (client, seq, yes) in votes {
            counted |= self.count_vote(client, seq, yes);
        }
        if counted && self.role.is_primary() {
            self.commit_ready(now);
        }
    }

    /// Records one vote; true if it was newly counted.
    fn count_vote(&mut self, client: u32, seq: Seq, yes: bool) -> bool {
        let Some(ballot) = self.ballots.get_mut(seq) else {
            debug!("vote-ignored client={client} seq={seq} reason=not-open");
            return false;
        };
        match ballot.record(client, yes) {
            VoteOutcome::Counted => {}
            VoteOutcome::Duplicate => return false,
            VoteOutcome::Conflict => {
                warn!("vote-conflict client={client} seq={seq} kept=first");
                return false;
            }
            VoteOutcome::NotAVoter => {
                debug!("vote-ignored client={client} seq={seq} reason=not-in-electorate");
                return false;
            }
        }
        let linked = self.peer.is_some();
        if let Some(primary) = self.role.primary_mut().filter(|_| linked) {
            primary.pending_forward.push((seq, client, yes));
            if primary.pending_forward.len() >= MAX_FORWARD_BATCH {
                self.flush_forwards();
            }
        }
        true
    }

    /// Commits every complete ballot in seq order (up to the first one still collecting
    /// votes), and tells results from the front once the backup (if the view has one)
    /// acknowledged them and we hold a majority's lease. Results leave in seq order, so a
    /// later ballot that completes first waits for the ones before. Several commits are in
    /// flight at once: one round trip to the backup per group of ballots, not per ballot.
    pub(super) fn commit_ready(&mut self, now: Instant) {
        if !self.role.is_primary() {
            return;
        }
        self.commit_complete_ballots();
        self.publish_acked(now);
    }

    /// Sends `Commit` for each complete ballot not yet committed, in seq order.
    fn commit_complete_ballots(&mut self) {
        let needs_ack = self.commit_backup().is_some();
        let view = self.views.installed.number;
        let commits = self
            .ballots
            .iter()
            .take_while(|b| b.state != BallotState::Open || b.complete())
            .any(|b| b.state == BallotState::Open);
        if commits {
            // The votes before the tallies they count in.
            self.flush_forwards();
        }
        for ballot in self.ballots.iter_mut() {
            match ballot.state {
                BallotState::Open if ballot.complete() => {
                    // A joining peer gets every commit too: its copy must be whole when it
                    // is installed as backup.
                    if let Some(peer) = &self.peer {
                        let (seq, tally) = (ballot.seq, ballot.tally());
                        self.out
                            .send_peer(peer.conn, PeerMsg::Commit { view, seq, tally });
                    }
                    // Commit before telling: the backup, who could take over, must know the
                    // result before any client sees it.
                    ballot.state = if needs_ack {
                        BallotState::Committing
                    } else {
                        BallotState::Acked
                    };
                }
                BallotState::Open => break,
                BallotState::Committing | BallotState::Acked => {}
            }
        }
    }

    /// Tells every client the acknowledged results at the front, lease permitting.
    fn publish_acked(&mut self, now: Instant) {
        let first = self.committed().next();
        let mut tallies = Vec::new();
        while self
            .ballots
            .front()
            .is_some_and(|b| b.state == BallotState::Acked)
            && self.holds_lease(now)
        {
            tallies.push(self.publish_one(now));
        }
        if tallies.is_empty() {
            return;
        }
        let conns = if self.role.primary().is_some_and(|p| p.leaving.is_empty()) {
            self.registry.connected_conns()
        } else {
            let connected = self.registry.connected();
            let getting = connected.filter(|&(idx, _)| self.gets_results(idx));
            getting.map(|(_, conn)| conn).collect()
        };
        self.out
            .results(conns, self.views.installed.number, first, tallies);
        self.renew_held_leases(now);
        if self.ballots.is_empty() {
            self.timers.stop(Timer::Reask);
        }
        self.release_leavers();
        self.arm_open_ballot(now);
    }

    /// The front ballot's result is final and known to the backup: record it as published
    /// (the caller tells every client).
    fn publish_one(&mut self, now: Instant) -> Tally {
        let Some(ballot) = self.ballots.pop_front() else {
            return Tally::default();
        };
        let tally = ballot.tally();
        self.history.record(tally);
        info!(
            "ballot-result seq={} yes={} no={} view={} ms={}",
            ballot.seq,
            tally.yes,
            tally.no,
            self.views.installed.number,
            now.saturating_duration_since(ballot.opened).as_millis()
        );
        tally
    }

    /// [`Timer::Reask`] fired, or a takeover: ask every connected client for the votes the
    /// open ballots still lack.
    pub(super) fn reask_missing_voters(&mut self, now: Instant) {
        if !self.role.is_primary() {
            return;
        }
        for idx in 0..self.registry.len() as u32 {
            if let Some(conn) = self.registry.conn(idx) {
                self.ask_missing_votes(idx, conn);
            }
        }
        if !self.ballots.is_empty() {
            self.timers.set(Timer::Reask, now + self.cfg.vote_timeout());
        }
        self.commit_ready(now);
    }

    /// Asks client `idx` for every vote of its that an open ballot still lacks: one
    /// `VoteRequest` per run of consecutive ballots.
    pub(super) fn ask_missing_votes(&mut self, idx: u32, conn: ConnId) {
        let view = self.views.installed.number;
        let mut run: Option<(Seq, u32)> = None;
        for ballot in self.ballots.iter() {
            if !ballot.awaits(idx) {
                continue;
            }
            match &mut run {
                Some((first, count)) if first.0 + u64::from(*count) == ballot.seq.0 => {
                    *count += 1;
                }
                _ => {
                    if let Some((first, count)) = run.replace((ballot.seq, 1)) {
                        self.out
                            .send_client(conn, ServerMsg::VoteRequest { view, first, count });
                    }
                }
            }
        }
        if let Some((first, count)) = run {
            debug!(
                "vote-ask client={} first={first} count={count}",
                self.registry.id(idx)
            );
            self.out
                .send_client(conn, ServerMsg::VoteRequest { view, first, count });
        }
    }
}
