//! Views: propose, accept, reject, install, take over, step down. A server acts in a view
//! only once a majority of the installed view's members and a majority of the proposed
//! view's members accepted it (a [`Proposal`]); clients
//! refuse a new primary while the current one's lease holds; a server that learns of an
//! installed view newer than its own, in which it has no place, steps down.

use super::membership::Members;
use super::recovery::{Recovery, Report};
use super::role::{Evidence, Installing, Leaving, RoleState, StepDown};
use super::timers::Timer;
use super::{Node, Output};
use crate::proto::{Fingerprint, PeerMsg, Seq, ServerMsg, View, ViewInfo};
use log::{debug, info, warn};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The view a server acts in and its members, the one it wants to act in, and the highest
/// number heard of.
#[derive(Debug)]
pub struct Views {
    /// The installed view: the one this server acts in.
    pub installed: ViewInfo,
    /// The installed view's voters.
    pub members: Members,
    /// Their fingerprint, as clients record it.
    pub fingerprint: Fingerprint,
    /// For each member that joined while this server knew the members: the first ballot
    /// it is a voter of (`status` shows it).
    pub voter_from: BTreeMap<u32, Seq>,
    pub proposal: Option<Proposal>,
    /// The highest view number heard of anywhere; proposals go above it.
    highest_seen: View,
}

/// A view this server wants to act in, waiting for its witnesses: a majority of the
/// installed view's members and a majority of the proposed view's members.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub view: ViewInfo,
    /// The installed view's members when it was proposed.
    pub base: Members,
    /// The members the proposed view will have.
    pub members: Members,
    /// Their fingerprint, as clients record it.
    pub fingerprint: Fingerprint,
    /// The clients (of either) that accepted.
    pub accepted: Members,
    /// Of those, how many are in `base` and how many in `members`.
    in_base: usize,
    in_members: usize,
    /// Clients it adds (in `members`, not in `base`) that have not accepted: each must.
    /// Counted, since a look at every member per `Accept` made a view change O(n²).
    joiners_waiting: usize,
    /// When it was first sent: an accept grants the proposer the client's lease from then.
    pub sent: Option<Instant>,
}

impl Proposal {
    fn new(view: ViewInfo, base: Members, members: Members, fingerprint: Fingerprint) -> Proposal {
        let joiners_waiting = members.iter().filter(|&i| !base.contains(i)).count();
        Proposal {
            view,
            base,
            members,
            fingerprint,
            accepted: Members::default(),
            in_base: 0,
            in_members: 0,
            joiners_waiting,
            sent: None,
        }
    }

    pub fn count(&self) -> usize {
        self.accepted.len()
    }

    /// Whether client `idx` is a witness of this proposal.
    pub fn asks(&self, idx: u32) -> bool {
        self.base.contains(idx) || self.members.contains(idx)
    }

    /// Client `idx` accepted; returns whether it counts (a witness, and new).
    fn accept(&mut self, idx: u32) -> bool {
        if !self.asks(idx) || self.accepted.contains(idx) {
            return false;
        }
        self.accepted.insert(idx);
        self.in_base += usize::from(self.base.contains(idx));
        self.in_members += usize::from(self.members.contains(idx));
        self.joiners_waiting -= usize::from(self.members.contains(idx) && !self.base.contains(idx));
        true
    }

    /// A recovering proposal asks every client that registers (its members are decided
    /// only at the install, from what the clients recorded).
    pub(super) fn add_member(&mut self, idx: u32) {
        if !self.members.contains(idx) {
            self.members.insert(idx);
            self.in_members += usize::from(self.accepted.contains(idx));
            self.joiners_waiting +=
                usize::from(!self.base.contains(idx) && !self.accepted.contains(idx));
        }
    }

    /// A majority of the old members and a majority of the new ones accepted, and every
    /// client it adds: a client joins by accepting the view that adds it (one that exited
    /// first, its connection's close not in yet, would be a member nobody hears from; one
    /// that disconnects is proposed away). A view change with no member on either side
    /// has no witness at all, and two servers could both install one: it never wins (a
    /// client that joins makes it one that can).
    pub fn won(&self) -> bool {
        let witnessed = self.base.len() + self.members.len() > 0;
        witnessed
            && self.joiners_waiting == 0
            && self.in_base >= self.base.majority()
            && self.in_members >= self.members.majority()
    }

    /// The counts kept as accepts arrive agree with a recount (an invariant).
    pub fn counts_hold(&self) -> bool {
        let accepted_in = |set: &Members| self.accepted.iter().filter(|&i| set.contains(i)).count();
        let waiting = (self.members.iter())
            .filter(|&i| !self.base.contains(i) && !self.accepted.contains(i))
            .count();
        self.in_base == accepted_in(&self.base)
            && self.in_members == accepted_in(&self.members)
            && self.joiners_waiting == waiting
    }

    /// Neither side has a member: nobody can accept it.
    pub fn unwitnessed(&self) -> bool {
        self.base.len() + self.members.len() == 0
    }
}

impl Views {
    pub fn new(installed: ViewInfo) -> Views {
        Views {
            installed,
            members: Members::default(),
            fingerprint: Fingerprint::EMPTY,
            voter_from: BTreeMap::new(),
            proposal: None,
            highest_seen: installed.number,
        }
    }

    pub fn highest_seen(&self) -> View {
        self.highest_seen
    }

    /// Someone spoke of view `number`.
    pub fn saw(&mut self, number: View) {
        self.highest_seen = self.highest_seen.max(number);
    }

    /// A number above every view heard of, now the highest seen.
    fn fresh_number(&mut self) -> View {
        // Saturating: `highest_seen` comes from the network.
        let number = View(
            self.highest_seen
                .0
                .max(self.installed.number.0)
                .saturating_add(1),
        );
        self.highest_seen = number;
        number
    }
}

impl Node {
    /// Proposes a view in which this server is primary with `backup`; it is installed
    /// once a majority of the installed members and of the proposed ones accepted it.
    pub(super) fn propose(&mut self, backup: Option<SocketAddr>, now: Instant) {
        self.new_proposal(backup);
        self.send_proposal(now);
    }

    fn new_proposal(&mut self, backup: Option<SocketAddr>) {
        let view = ViewInfo {
            number: self.views.fresh_number(),
            primary: self.cfg.listen,
            backup,
        };
        let members = self.members_to_propose();
        info!(
            "view-propose view={view} members={} joining={}",
            members.len(),
            members
                .iter()
                .filter(|&i| !self.views.members.contains(i))
                .count()
        );
        let base = self.views.members.clone();
        let fingerprint = self.fingerprint(&members);
        self.views.proposal = Some(Proposal::new(view, base, members, fingerprint));
    }

    /// The pending proposal, as told to its proposed members (`member`) or to the other
    /// witnesses.
    fn proposal_msg(&self, member: bool) -> Option<ServerMsg> {
        self.views.proposal.as_ref().map(|p| ServerMsg::Propose {
            view: p.view,
            base: self.views.installed.number,
            recovering: self.role.is_recovering(),
            node: self.cfg.node,
            lease_ms: self.lease_ms(),
            members: p.fingerprint,
            member,
        })
    }

    /// The pending proposal, for client `idx` if it is one of its witnesses.
    pub(super) fn proposal_msg_for(&self, idx: u32) -> Option<ServerMsg> {
        let p = self.views.proposal.as_ref().filter(|p| p.asks(idx))?;
        self.proposal_msg(p.members.contains(idx))
    }

    /// Sends the proposal to every connected witness that has not accepted it; also
    /// [`Timer::Propose`]'s handler.
    pub(super) fn send_proposal(&mut self, now: Instant) {
        if self.views.proposal.is_none() {
            // Armed while a fresh primary waited to take members in.
            self.propose_membership_change(now);
            return;
        }
        if self.proposal_may_install(now) {
            self.install_proposal(now);
            return;
        }
        let (Some(to_members), Some(to_others)) =
            (self.proposal_msg(true), self.proposal_msg(false))
        else {
            return;
        };
        let Some(p) = &mut self.views.proposal else {
            return;
        };
        p.sent.get_or_insert(now);
        let (mut members, mut others) = (Vec::new(), Vec::new());
        for idx in 0..self.registry.len() as u32 {
            if !p.asks(idx) || p.accepted.contains(idx) {
                continue;
            }
            if let Some(conn) = self.registry.conn(idx) {
                if p.members.contains(idx) {
                    members.push(conn);
                } else {
                    others.push(conn);
                }
            }
        }
        self.out.send_clients(members, to_members);
        self.out.send_clients(others, to_others);
        self.timers.set(Timer::Propose, now + self.cfg.heartbeat);
    }

    /// Client `idx` accepted view `view`, reporting its log's end and its votes since.
    pub(super) fn on_accept(
        &mut self,
        idx: u32,
        view: View,
        last_seq: Seq,
        votes: Vec<(Seq, bool)>,
        report: Report,
        now: Instant,
    ) {
        // Results the client lacks: it asks (`Resend`) when it adopts the view we install,
        // or says `last_seq` in its hello when it connects later.
        self.registry.note_logged(idx, last_seq);
        self.count_votes(votes.into_iter().map(|(seq, yes)| (idx, seq, yes)), now);
        let Some(p) = &mut self.views.proposal else {
            return;
        };
        if p.view.number != view || !p.accept(idx) {
            return;
        }
        let (sent, count, members) = (p.sent, p.count(), p.members.len());
        // Accepting, the client made us its lease holder (from when it heard us).
        if let Some(sent) = sent {
            self.leases.extend(idx, sent);
        }
        let id = self.registry.id(idx).clone();
        if let Some(recovery) = self.recovery_mut() {
            recovery.add_tail(last_seq, report.tail, report.tail_base);
            recovery.add_records(idx, &id, report.followed, report.promised);
            debug!(
                "view-accept client={idx} view={view} accepted={count}/{members} recovering=true"
            );
        } else {
            debug!("view-accept client={idx} view={view} accepted={count} members={members}");
        }
        if self.proposal_may_install(now) {
            self.install_proposal(now);
        }
    }

    /// The pending proposal has its witnesses. A recovering one needs every member of the
    /// memberships the clients recorded (see [`Recovery::is_complete`]): a result that
    /// reached only one of them must not be run again with a different electorate.
    fn proposal_may_install(&self, now: Instant) -> bool {
        let Some(p) = &self.views.proposal else {
            return false;
        };
        match self.role.primary().and_then(|p| p.recovery.as_ref()) {
            Some(recovery) => {
                let connected = |idx| self.registry.conn(idx).is_some();
                recovery.is_complete(connected, self.waited_for_first_ballot(now))
            }
            None => p.won(),
        }
    }

    /// A server started as primary has waited as long as it waits for ballot 1.
    fn waited_for_first_ballot(&self, now: Instant) -> bool {
        let at = self.role.primary().and_then(|p| p.first_ballot_at);
        at.is_none_or(|t| now >= t)
    }

    fn recovery_mut(&mut self) -> Option<&mut Recovery> {
        self.role.primary_mut().and_then(|p| p.recovery.as_mut())
    }

    /// A client refused our proposal `proposed`.
    pub(super) fn on_reject(
        &mut self,
        proposed: View,
        accepted: ViewInfo,
        promised: View,
        retry_after_ms: Option<u64>,
        now: Instant,
    ) {
        self.views.saw(accepted.number);
        self.views.saw(promised);
        if self.learn_view(accepted, Evidence::ClientRejected) {
            return;
        }
        let Some(p) = &self.views.proposal else {
            return;
        };
        if p.view.number != proposed {
            return;
        }
        match retry_after_ms {
            // The current primary's lease still holds at that client.
            Some(ms) => self
                .timers
                .set_no_later_than(Timer::Propose, now + Duration::from_millis(ms)),
            // It promised a competing proposal of the same or a higher number: go above.
            // The installed primary does so at once; a challenger yields, so two
            // proposers cannot outbid each other forever.
            None if promised >= proposed => {
                let backup = p.view.backup;
                if self.role.is_primary() {
                    self.propose(backup, now);
                } else {
                    self.new_proposal(backup);
                    self.timers
                        .set(Timer::Propose, now + self.cfg.challenger_yield());
                }
            }
            None => {}
        }
    }

    /// Someone has installed `installed`. If it is newer than ours and we are not its
    /// primary, we were replaced: step down. Returns whether we did.
    pub(super) fn learn_view(&mut self, installed: ViewInfo, evidence: Evidence) -> bool {
        self.views.saw(installed.number);
        if self.role.is_recovering() {
            // Of course the clients know newer views: that is what we are rebuilding.
            return false;
        }
        let ours = self.views.installed;
        let listen = self.cfg.listen;
        let replaced = installed.number > ours.number
            && installed.primary != listen
            && !(self.role.is_backup() && installed.backup == Some(listen));
        if replaced && !self.role.is_joining() {
            self.step_down(StepDown::Replaced {
                evidence,
                installed,
                ours,
            });
            return true;
        }
        false
    }

    /// Exits: flush what is queued, handle nothing more.
    pub(super) fn step_down(&mut self, reason: StepDown) {
        warn!(
            "stepped-down role={} view={} reason={reason}",
            self.role.wire(),
            self.views.installed.number
        );
        self.role.step_down();
        self.timers.stop_all();
        self.out.push(Output::Exit(reason));
    }

    /// The witnesses accepted: act in the proposed view.
    pub(super) fn install_proposal(&mut self, now: Instant) {
        let Some(mut p) = self.views.proposal.take() else {
            return;
        };
        self.timers.stop(Timer::Propose);
        if let Some(recovery) = self.role.primary().and_then(|p| p.recovery.as_ref()) {
            // The members the clients recorded; the others with history join afterwards.
            p.members = recovery.members(self.waited_for_first_ballot(now));
            p.fingerprint = self.fingerprint(&p.members);
        }
        let view = p.view;
        let removed = self.removed_by(&p);
        let installing = Installing {
            view,
            members: p.members,
            removed,
        };
        // A view with a backup linked here: the backup first, the clients after its ack.
        if let (Some(backup), Some(peer), RoleState::Primary(primary)) =
            (view.backup, &self.peer, &mut self.role)
        {
            if peer.addr == backup {
                info!(
                    "view-accepted view={view} accepted={} members={} waiting=install-ack",
                    p.accepted.len(),
                    installing.members.len()
                );
                let install = PeerMsg::Install {
                    view,
                    members: installing.members.iter().collect(),
                    removed: installing.removed.iter().collect(),
                };
                self.out.send_peer(peer.conn, install);
                primary.pending_install = Some(installing);
                // From now on what we tell clients must be known to the backup too.
                self.recommit();
                self.commit_ready(now);
                return;
            }
        }
        self.install(installing, p.accepted.len(), now);
    }

    /// Acts in the view being installed, with its members as voters, as its primary from
    /// now on and tells every client.
    pub(super) fn install(&mut self, installing: Installing, accepted: usize, now: Instant) {
        let Installing {
            view,
            members,
            removed,
        } = installing;
        debug_assert!(
            view.number > self.views.installed.number,
            "installing {view} over {}",
            self.views.installed
        );
        let took_over = self.role.become_primary();
        info!(
            "view-change role=primary view={view} accepted={accepted} members={} took_over={took_over}",
            members.len()
        );
        self.views.installed = view;
        self.leases.set_members(&members);
        self.set_members(members);
        // Leaves told to us as backup carry over: the new primary must not take those
        // clients back in, and tells them `Left` in time.
        let leavers: Vec<u32> = self.registry.leaving().collect();
        if let Some(primary) = self.role.primary_mut() {
            for idx in leavers {
                primary.leaving.entry(idx).or_insert(Leaving::Asked);
            }
        }
        let unblocked = self.drop_removed_voters(&removed);
        self.answer_removals(unblocked);
        self.finish_recovery();
        // Clients that said hello while we were backup and that the old primary never
        // registered: they are ours to register now (they join).
        for id in self.registry.unregistered_ids() {
            info!("client-registered client={id} at=takeover");
            self.register(id);
        }
        self.announce_view();
        self.answer_resends_held_for_install(now);
        self.recommit();
        self.timers.set(Timer::Heartbeat, now);
        if took_over {
            // Finish the past: ask for every vote still missing.
            self.reask_missing_voters(now);
        }
        // A backup spawned before and still starting (its join deadline armed) is the
        // replacement: a view that only changes the members must not kill it.
        let starting = self.timers.is_armed(Timer::JoinDeadline);
        if view.backup.is_none() && self.peer.is_none() && !starting {
            let reason = if took_over {
                "took-over"
            } else {
                "backup-lost"
            };
            self.spawn_backup(reason, now);
        }
        self.commit_ready(now);
        self.arm_open_ballot(now);
        // Before a new proposal is on its way (which holds every `Left` back).
        self.release_leavers();
        self.propose_membership_change(now);
        self.arm_absent(now);
    }

    /// A recovering primary's view is installed: the longest tail the clients reported is
    /// its history from now on.
    fn finish_recovery(&mut self) {
        let Some(recovery) = self.role.primary_mut().and_then(|p| p.recovery.take()) else {
            return;
        };
        let (history, logs) = recovery.into_results();
        if let Some((first, tail, base)) = history {
            self.history.restore(first, tail, base);
        }
        warn!(
            "cold-restart-recovered committed={} first_held={} view={}",
            self.committed(),
            self.history.first(),
            self.views.installed
        );
        // The clients taken in while recovering, as a hello is checked now: one whose
        // log is of another history (removed while it held results only it had, and back;
        // or another cluster's) is refused, not continued.
        for (idx, (log, view)) in logs {
            if let Some(conn) = self.registry.conn(idx) {
                let id = self.registry.id(idx).clone();
                self.refuse_other_history(conn, &id, log, view);
            }
        }
    }

    /// `Resend`s that waited for the view we now act in.
    fn answer_resends_held_for_install(&mut self, now: Instant) {
        let Some(primary) = self.role.primary_mut() else {
            return;
        };
        for (conn, from) in std::mem::take(&mut primary.resend_after_install) {
            if self.registry.is_client_conn(conn) {
                // A catch-up under way went out tagged with the old view: start over.
                if let Some(primary) = self.role.primary_mut() {
                    primary.catching_up.remove(&conn);
                }
                let view = self.views.installed.number;
                self.send_results_from(conn, from, view, now);
            }
        }
    }

    /// The backup's primary is dead: propose a view in which we are primary.
    pub(super) fn take_over(&mut self, now: Instant) {
        info!(
            "takeover-start view={} committed={} open={}",
            self.views.installed.number,
            self.committed(),
            self.ballots.len()
        );
        self.propose(None, now);
    }
}
