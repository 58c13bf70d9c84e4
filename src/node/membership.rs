//! Which registered clients are voters: the membership, part of every view. It changes
//! only through a view change that a majority of the old membership *and* a majority of
//! the new one accepted (joint consensus in one step), so any two memberships that can
//! install anything have a member in common; docs/PROTOCOL.md §1 (membership) and §6
//! argue it. Clients join (a view adds every connected non-member) and leave (`Leave`, a
//! view without them, then `Left`) here.

use super::role::{Leaving, Removal, RemovalReason, RoleState};
use super::timers::Timer;
use super::views::Proposal;
use super::{Node, Output};
use crate::link::ConnId;
use crate::proto::{ClientId, Fingerprint, MemberStatus, RemoveReply, Seq, ServerMsg, View};
use log::{info, warn};
use std::time::Instant;

/// A set of client indexes (the registry's), with its size kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    is: Vec<bool>,
    count: usize,
}

impl Members {
    pub fn from_indexes(indexes: impl IntoIterator<Item = u32>) -> Members {
        let mut members = Members::default();
        for idx in indexes {
            members.insert(idx);
        }
        members
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn contains(&self, idx: u32) -> bool {
        self.is.get(idx as usize).copied().unwrap_or(false)
    }

    pub fn remove(&mut self, idx: u32) {
        if let Some(m) = self.is.get_mut(idx as usize).filter(|m| **m) {
            *m = false;
            self.count -= 1;
        }
    }

    pub fn insert(&mut self, idx: u32) {
        let i = idx as usize;
        if i >= self.is.len() {
            self.is.resize(i + 1, false);
        }
        if !self.is[i] {
            self.is[i] = true;
            self.count += 1;
        }
    }

    /// Accepts needed from this membership: more than half of it. An empty membership
    /// has nobody who could have seen anything, so it needs none.
    pub fn majority(&self) -> usize {
        if self.count == 0 {
            0
        } else {
            self.count / 2 + 1
        }
    }

    /// The member indexes, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.is
            .iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(i, _)| i as u32)
    }

    /// One past the highest member index (0 if empty).
    pub fn bound(&self) -> u32 {
        self.is.iter().rposition(|&m| m).map_or(0, |i| i as u32 + 1)
    }

    /// `self` with `others` added.
    pub fn union(&self, others: impl IntoIterator<Item = u32>) -> Members {
        let mut members = self.clone();
        for idx in others {
            members.insert(idx);
        }
        members
    }
}

impl Node {
    /// From now on `members` are the voters: the ones new here vote from the next ballot.
    pub(super) fn set_members(&mut self, members: Members) {
        let next = self.next_seq();
        let fingerprint = self.fingerprint(&members);
        let views = &mut self.views;
        views.voter_from.retain(|idx, _| members.contains(*idx));
        for idx in members.iter() {
            if !views.members.contains(idx) {
                views.voter_from.insert(idx, next);
            }
        }
        views.fingerprint = fingerprint;
        views.members = members;
    }

    /// The fingerprint of `members`.
    pub(super) fn fingerprint(&self, members: &Members) -> Fingerprint {
        Fingerprint::of(members.iter().map(|idx| self.registry.id(idx)))
    }

    /// Each member as `status` shows it.
    pub(super) fn member_status(&self, now: Instant) -> Vec<MemberStatus> {
        let members = self.views.members.iter();
        members
            .map(|idx| MemberStatus {
                id: self.registry.id(idx).clone(),
                connected: self.registry.conn(idx).is_some(),
                absent_ms: (self.registry.lost_at(idx))
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                voter_from: self.views.voter_from.get(&idx).copied(),
            })
            .collect()
    }

    /// The members a view this server proposes will have: as primary, the installed ones,
    /// plus every connected client that is not one yet (it joins), minus the ones that
    /// asked to leave; a recovering primary asks every client that registered (it installs
    /// the members they recorded: [`super::recovery::Recovery::members`]); a backup taking
    /// over, the installed ones.
    pub(super) fn members_to_propose(&self) -> Members {
        match &self.role {
            RoleState::Primary(p) if p.is_recovering() => {
                Members::from_indexes(0..self.registry.len() as u32)
            }
            RoleState::Primary(p) => {
                let mut members = self.views.members.union(self.joiners());
                for &idx in p.leaving.keys().chain(p.removing.keys()) {
                    members.remove(idx);
                }
                members
            }
            RoleState::Joining(_) | RoleState::Backup | RoleState::SteppedDown { .. } => {
                self.views.members.clone()
            }
        }
    }

    /// Registered, connected clients that are not members and do not want out.
    pub(super) fn joiners(&self) -> Vec<u32> {
        (0..self.registry.len() as u32)
            .filter(|&i| self.is_joiner(i))
            .collect()
    }

    /// Whether client `idx` is one of [`Node::joiners`].
    pub(super) fn is_joiner(&self, idx: u32) -> bool {
        let p = self.role.primary();
        let wants_out = self.registry.asked_to_leave(idx)
            || p.is_some_and(|p| p.leaving.contains_key(&idx) || p.removing.contains_key(&idx));
        !self.views.members.contains(idx) && self.registry.conn(idx).is_some() && !wants_out
    }

    /// As primary with nothing pending, proposes a view that adds the clients waiting to
    /// join and drops the members that asked to leave. One proposal takes every such
    /// change there is; the ones that come meanwhile wait for the next.
    pub(super) fn propose_membership_change(&mut self, now: Instant) {
        let Some(primary) = self.role.primary() else {
            return;
        };
        // A server started as primary takes no member in before its first-ballot wait is
        // over: a client with history arriving meanwhile makes this a cold restart, and the
        // recovery must not meet views of this server's own (docs/PROTOCOL.md §9).
        if let Some(at) = primary.first_ballot_at.filter(|&at| now < at) {
            if self.is_pristine() && !primary.is_recovering() {
                self.timers.set_no_later_than(Timer::Propose, at);
                return;
            }
        }
        let idle = !primary.is_recovering() && primary.pending_install.is_none();
        let mut going = primary.leaving.keys().chain(primary.removing.keys());
        let leaving = going.any(|&i| self.views.members.contains(i))
            || primary.removing.keys().any(|&i| self.awaited(i));
        // A view whose backup is not linked is about to give way to one without it, unless
        // that one has no witness at all (no member on either side): then joiners first.
        let unwitnessed = self
            .views
            .proposal
            .as_ref()
            .is_some_and(|p| p.unwitnessed());
        let backup_linked =
            self.views.installed.backup.is_none() || self.peer.is_some() || unwitnessed;
        // A pending proposal nobody can accept gives way to one with the joiners in it.
        let free = self.views.proposal.as_ref().is_none_or(|p| p.unwitnessed());
        // Last, since it looks at every client.
        let wanted = || leaving || !self.joiners().is_empty();
        if idle && backup_linked && free && wanted() {
            let backup = match &self.views.proposal {
                Some(p) => p.view.backup,
                None => self.views.installed.backup,
            };
            self.propose(backup, now);
        }
    }

    /// A client that left before accepting was to join in the pending proposal: it would
    /// hold up the new members' majority, so the primary proposes again without it.
    pub(super) fn joiner_gone(&mut self, idx: u32, now: Instant) {
        let Some(p) = &self.views.proposal else {
            return;
        };
        let waited_for = p.members.contains(idx) && !p.base.contains(idx);
        let primary = self.role.primary().is_some_and(|p| !p.is_recovering());
        if primary && waited_for && !p.accepted.contains(idx) {
            let backup = p.view.backup;
            self.propose(backup, now);
        }
    }

    /// A client registered: a recovering proposal takes it in.
    pub(super) fn registered(&mut self, idx: u32) {
        if self.role.is_recovering() {
            if let Some(p) = &mut self.views.proposal {
                p.add_member(idx);
            }
        }
    }

    /// Client `idx` asks to leave. It is dropped from the next view; once that view is
    /// installed and no open ballot waits for its vote, it gets `Left`.
    pub(super) fn on_leave(&mut self, idx: u32, now: Instant) {
        // A backup keeps it too: if it takes over, it must not take the client back in.
        self.registry.set_leaving(idx, true);
        let Some(primary) = self.role.primary_mut() else {
            return;
        };
        let registry = &self.registry;
        let state = primary.leaving.entry(idx).or_insert_with(|| {
            info!("client-leaving client={}", registry.id(idx));
            Leaving::Asked
        });
        // Asked again after it was told (the `Left` was lost): tell it again.
        if matches!(state, Leaving::Told { .. }) {
            *state = Leaving::Asked;
        }
        let adds_it = self
            .views
            .proposal
            .as_ref()
            .is_some_and(|p| p.members.contains(idx));
        if adds_it && self.role.primary().is_some_and(|p| !p.is_recovering()) {
            // The pending proposal keeps it in (or takes it in): propose again without it.
            let backup = self.views.proposal.as_ref().and_then(|p| p.view.backup);
            self.propose(backup, now);
        } else {
            self.propose_membership_change(now);
        }
        self.release_leavers();
    }

    /// `pbvote remove-client --id ID`: a client gone for good leaves the membership
    /// without asking. Answered once a view without it is installed.
    pub(super) fn on_remove_request(&mut self, conn: ConnId, id: ClientId, now: Instant) {
        let reply = |node: &mut Node, reply: RemoveReply| {
            node.out.push(Output::Removed(conn, reply));
            node.out.close(conn, "remove answered");
        };
        if let Some(recovery) = self.role.primary_mut().and_then(|p| p.recovery.as_mut()) {
            // Gone for good: the recovery stops waiting for it, and may be done now.
            warn!("client-removing client={id} by=operator recovering=true");
            recovery.remove(&id);
            self.send_proposal(now);
            if self.role.is_recovering() {
                // Still short of members, or whole but a client with history has not
                // reported yet (0 of 0).
                let waiting = self
                    .role
                    .primary()
                    .and_then(|p| p.recovery.as_ref()?.waiting_for());
                let (view, present, members) = waiting.unwrap_or((self.views.highest_seen(), 0, 0));
                let waiting = RemoveReply::Recovering {
                    view,
                    present,
                    members,
                };
                return reply(self, waiting);
            }
            let view = self.views.installed.number;
            let unblocked = Vec::new();
            return reply(self, RemoveReply::Removed { view, unblocked });
        }
        let acting = self.role.primary().is_some_and(|p| !p.is_recovering());
        if !acting {
            let primary = (self.role.is_backup() && self.views.proposal.is_none())
                .then_some(self.views.installed.primary);
            return reply(self, RemoveReply::AskPrimary { primary });
        }
        let Some(idx) = self.registry.index_of(&id) else {
            return reply(self, RemoveReply::NoSuchClient);
        };
        let proposed = self
            .views
            .proposal
            .as_ref()
            .is_some_and(|p| p.members.contains(idx));
        if !self.views.members.contains(idx) && !proposed && !self.awaited(idx) {
            let view = self.views.installed.number;
            let unblocked = Vec::new();
            return reply(self, RemoveReply::Removed { view, unblocked });
        }
        warn!("client-removing client={id} by=operator");
        if let Some(primary) = self.role.primary_mut() {
            primary.removing.entry(idx).or_default().waiting.push(conn);
        }
        self.propose_membership_change(now);
    }

    /// [`Timer::Absent`] fired: members disconnected for `--absent-after-ms` are removed.
    pub(super) fn remove_absent(&mut self, now: Instant) {
        let Some(after) = self.cfg.absent_after else {
            return;
        };
        for idx in self.absence_candidates() {
            let since = self.registry.gone_since(idx, now);
            let Some(since) = since.filter(|&t| now.saturating_duration_since(t) >= after) else {
                continue;
            };
            let Some(primary) = self.role.primary_mut() else {
                return;
            };
            if let std::collections::btree_map::Entry::Vacant(entry) = primary.removing.entry(idx) {
                warn!(
                    "client-removing client={} by=absent absent_ms={}",
                    self.registry.id(idx),
                    now.saturating_duration_since(since).as_millis()
                );
                entry.insert(Removal {
                    reason: RemovalReason::Absent,
                    ..Removal::default()
                });
            }
        }
        self.propose_membership_change(now);
        self.arm_absent(now);
    }

    /// Whose absence holds ballots up: the members, and whoever an open ballot awaits (a
    /// leaver that stopped before its last ballots completed).
    fn absence_candidates(&self) -> Vec<u32> {
        let awaited = (0..self.registry.len() as u32).filter(|&i| self.awaited(i));
        self.views.members.union(awaited).iter().collect()
    }

    /// Whether an open ballot still waits for client `idx`'s vote.
    pub(super) fn awaited(&self, idx: u32) -> bool {
        self.ballots.iter().any(|b| b.awaits(idx))
    }

    /// Arms [`Timer::Absent`] for the first member that will have been disconnected for
    /// `--absent-after-ms`, if the flag is set and this server is the acting primary.
    pub(super) fn arm_absent(&mut self, now: Instant) {
        let acting = self.role.primary().is_some_and(|p| !p.is_recovering());
        let Some(after) = self.cfg.absent_after.filter(|_| acting) else {
            self.timers.stop(Timer::Absent);
            return;
        };
        let removing = |idx| {
            self.role
                .primary()
                .is_some_and(|p| p.removing.contains_key(&idx))
        };
        let candidates = self.absence_candidates();
        let members: Vec<u32> = candidates.into_iter().filter(|&i| !removing(i)).collect();
        let first = members
            .into_iter()
            .filter_map(|idx| self.registry.gone_since(idx, now))
            .min();
        match first {
            Some(since) => self.timers.set(Timer::Absent, since + after),
            None => self.timers.stop(Timer::Absent),
        }
    }

    /// Client `idx` lost its connection: [`Timer::Absent`] fires no later than its own
    /// absence is due (the rest of the timer stands: whoever it was armed for went
    /// earlier). O(open ballots), not O(clients) as [`Node::arm_absent`] is: a mass
    /// disconnect would be O(clients²). A client that connects needs nothing: a timer
    /// armed for it fires, finds it back and arms for the next.
    pub(super) fn arm_absent_for(&mut self, idx: u32, now: Instant) {
        let acting = self
            .role
            .primary()
            .is_some_and(|p| !p.is_recovering() && !p.removing.contains_key(&idx));
        let Some(after) = self.cfg.absent_after.filter(|_| acting) else {
            return;
        };
        if !self.views.members.contains(idx) && !self.awaited(idx) {
            return;
        }
        if let Some(since) = self.registry.gone_since(idx, now) {
            self.timers.set_no_later_than(Timer::Absent, since + after);
        }
    }

    /// The members the pending proposal drops because an operator removes them.
    pub(super) fn removed_by(&self, p: &Proposal) -> Members {
        let Some(primary) = self.role.primary() else {
            return Members::default();
        };
        // Members it drops, and non-members an open ballot still waits for (a leaver
        // that stopped before its last ballots completed).
        let removed = primary.removing.keys().copied();
        Members::from_indexes(removed.filter(|&i| !p.members.contains(i)))
    }

    /// No open ballot waits for the votes of `removed` any more; returns, per client, the
    /// ballots that did.
    pub(super) fn drop_removed_voters(&mut self, removed: &Members) -> Vec<(u32, Vec<Seq>)> {
        let mut unblocked = Vec::new();
        for idx in removed.iter() {
            let seqs: Vec<Seq> = (self.ballots.iter_mut())
                .filter_map(|b| b.drop_voter(idx).then_some(b.seq))
                .collect();
            let reason = self
                .role
                .primary()
                .and_then(|p| p.removing.get(&idx))
                .map_or(RemovalReason::Operator, |r| r.reason);
            info!(
                "client-removed client={} reason={reason} unblocked={}",
                self.registry.id(idx),
                seqs.len()
            );
            unblocked.push((idx, seqs));
        }
        unblocked
    }

    /// Tells each `remove-client` that waited that its client is out.
    pub(super) fn answer_removals(&mut self, unblocked: Vec<(u32, Vec<Seq>)>) {
        let view = self.views.installed.number;
        for (idx, seqs) in unblocked {
            let removal = self
                .role
                .primary_mut()
                .and_then(|p| p.removing.remove(&idx));
            let (waiting, refuse) = removal.map_or((Vec::new(), None), |r| (r.waiting, r.refuse));
            if let (Some(reason), Some(conn)) = (refuse, self.registry.conn(idx)) {
                self.refuse_client(conn, reason, true);
            }
            for conn in waiting {
                let reply = RemoveReply::Removed {
                    view,
                    unblocked: seqs.clone(),
                };
                self.out.push(Output::Removed(conn, reply));
                self.out.close(conn, "remove answered");
            }
        }
    }

    /// Tells every client that asked to leave, is no member, has no vote an open ballot
    /// waits for, and holds no result that no member has logged, that it may go.
    pub(super) fn release_leavers(&mut self) {
        let view = self.views.installed.number;
        let committed = self.committed();
        let members_logged = self.members_logged();
        let Some(primary) = self.role.primary_mut() else {
            return;
        };
        // Out of every view installed or on its way, and of every open ballot's electorate
        // (a vote it cast may not have reached the backup yet: a ballot is safe to leave
        // only once it is gone).
        let pending = self.views.proposal.as_ref();
        let installing = primary.pending_install.as_ref();
        let free = |idx: &u32| {
            let idx = *idx;
            !self.views.members.contains(idx)
                && pending.is_none_or(|p| !p.members.contains(idx))
                && installing.is_none_or(|i| !i.members.contains(idx))
                && self.ballots.iter().all(|b| !b.counts(idx))
        };
        // Tagged with the newest view on its way, if one is: a client that has promised
        // it, or already follows it (told by the backup), ignores a `Left` tagged with an
        // older one, and it is told once. No view of this primary takes a leaver back in.
        let view = [
            pending.map(|p| p.view.number),
            installing.map(|i| i.view.number),
        ]
        .into_iter()
        .flatten()
        .fold(view, View::max);
        let asked = primary
            .leaving
            .iter()
            .filter(|(_, l)| **l == Leaving::Asked);
        let freed: Vec<u32> = asked.map(|(&idx, _)| idx).filter(free).collect();
        for idx in freed {
            // From now on it is sent no result: what it may have logged stays put.
            let last_sent = committed;
            info!(
                "client-draining client={} last_sent={last_sent}",
                self.registry.id(idx)
            );
            primary.leaving.insert(idx, Leaving::Draining { last_sent });
        }
        // With no member left, nobody else can hold its results: it goes at once.
        let logged_elsewhere = |last_sent: Seq| members_logged.is_none_or(|m| m >= last_sent);
        let released: Vec<(u32, Seq)> = primary
            .leaving
            .iter()
            .filter_map(|(&idx, l)| match *l {
                Leaving::Draining { last_sent } if logged_elsewhere(last_sent) => {
                    Some((idx, last_sent))
                }
                _ => None,
            })
            .collect();
        for (idx, last_sent) in released {
            primary.leaving.insert(idx, Leaving::Told { last_sent });
            info!("client-left client={} view={view}", self.registry.id(idx));
            if let Some(conn) = self.registry.conn(idx) {
                self.out.send_client(conn, ServerMsg::Left { view });
            }
        }
    }

    /// Whether a leaver waits for a member to log what it was sent.
    pub(super) fn has_draining_leavers(&self) -> bool {
        self.role.primary().is_some_and(|p| {
            let mut states = p.leaving.values();
            states.any(|l| matches!(l, Leaving::Draining { .. }))
        })
    }

    /// The most any member that stays has said it logged (`None`: no such member): a
    /// member of the newest view (the install under way, else the pending proposal, else
    /// the installed view), which a cold restart would require, not being removed (a
    /// removed member's copy may go with it). Asked only while a leaver may be draining.
    fn members_logged(&self) -> Option<Seq> {
        let Some(primary) = self.role.primary() else {
            return Some(Seq(0));
        };
        let mut states = primary.leaving.values();
        if !states.any(|l| !matches!(l, Leaving::Told { .. })) {
            return Some(Seq(0));
        }
        let newest = (primary.pending_install.as_ref().map(|i| &i.members))
            .or(self.views.proposal.as_ref().map(|p| &p.members))
            .unwrap_or(&self.views.members);
        let stays = |m: &u32| !primary.removing.contains_key(m);
        let members = newest.iter().filter(stays);
        members.map(|m| self.registry.logged(m)).max()
    }

    /// A leaver that is draining or told is sent no result after its `last_sent`.
    pub(super) fn gets_results(&self, idx: u32) -> bool {
        self.last_result_for(idx).is_none()
    }

    /// The last result client `idx` may be sent, if it is a leaver past `Asked`.
    pub(super) fn last_result_for(&self, idx: u32) -> Option<Seq> {
        match self.role.primary()?.leaving.get(&idx)? {
            Leaving::Asked => None,
            Leaving::Draining { last_sent } | Leaving::Told { last_sent } => Some(*last_sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities_of_two_memberships_one_apart_share_a_member() {
        let old = Members::from_indexes([0, 1, 2]);
        let new = old.union([3]);
        assert_eq!((old.majority(), new.majority()), (2, 3));
        assert_eq!(Members::default().majority(), 0);
        assert_eq!(new.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(new.bound(), 4);
        assert!(new.contains(3) && !old.contains(3) && !old.contains(99));
    }
}
