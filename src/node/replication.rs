//! Replication with the other server: heartbeats and the peer's liveness, the join (both
//! sides: the joiner's dial and snapshot, the primary's acceptance), the live stream
//! (`Register`, `Open`, `Forward`, `Commit` and their acks), and spawning a backup.

use super::ballot::Ballot;
use super::membership::Members;
use super::role::{Evidence, RoleState, StepDown};
use super::timers::Timer;
use super::{Node, Output};
use crate::link::ConnId;
use crate::proto::limits::MAX_OPEN_BALLOTS;
use crate::proto::messages::OpenBallot;
use crate::proto::{
    Hello, JoinRefusal, NodeId, PeerMsg, Seq, ServerMsg, Snapshot, Tally, View, ViewInfo,
};
use log::{debug, info, warn};
use std::net::SocketAddr;
use std::time::Instant;

/// The other replica, as seen from here.
#[derive(Clone, Debug)]
pub struct Peer {
    pub conn: ConnId,
    /// Its client-facing address (the backup's `listen`, or the primary we joined).
    pub addr: SocketAddr,
    pub last_heard: Instant,
}

/// Why a peer counts as gone.
#[derive(Clone, Copy, Debug)]
pub enum PeerLoss {
    Silent,
    Closed,
    ChildExited,
}

impl PeerLoss {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerLoss::Silent => "missed-heartbeats",
            PeerLoss::Closed => "connection-closed",
            PeerLoss::ChildExited => "child-exited",
        }
    }
}

impl Node {
    // ----- the joiner's side ---------------------------------------------------------

    /// [`Timer::Join`] fired: dial the primary.
    pub(super) fn start_join(&mut self) {
        info!("join-start primary={}", self.views.installed.primary);
        self.out.push(Output::Dial(self.views.installed.primary));
    }

    /// Our dial to the primary is up: say who we are.
    pub(super) fn on_join_dialed(&mut self, conn: ConnId, addr: SocketAddr, now: Instant) {
        if !self.role.is_joining() || addr != self.views.installed.primary || self.peer.is_some() {
            self.out.close(conn, "unexpected connection");
            return;
        }
        info!("join-dialed primary={addr} conn={conn}");
        self.peer = Some(Peer {
            conn,
            addr,
            last_heard: now,
        });
        self.out.push(Output::Hello(
            conn,
            Hello::Peer {
                node: self.cfg.node,
                listen: self.cfg.listen,
                view: self.views.installed.number,
            },
        ));
        self.arm_peer_timers(now);
    }

    /// Tries to join again in a heartbeat, unless it is time to give up.
    pub(super) fn retry_join(&mut self, now: Instant) {
        let RoleState::Joining(joining) = &self.role else {
            return;
        };
        if now >= joining.give_up_at {
            // Left behind (its primary died, or a script stopped the primary and not us),
            // a joiner would retry for ever.
            self.step_down(StepDown::NoPrimaryToJoin {
                primary: self.views.installed.primary,
                waited_ms: self.cfg.join_give_up().as_millis() as u64,
            });
            return;
        }
        self.timers.set(Timer::Join, now + self.cfg.heartbeat);
    }

    /// A peer says we were replaced by `view`.
    pub(super) fn on_fence(&mut self, conn: ConnId, view: ViewInfo) {
        // Only on our own peer link: any connection could claim anything.
        if self.peer.as_ref().is_none_or(|p| p.conn != conn) {
            self.out.close(conn, "fence off the peer link");
        } else if self.role.is_joining() {
            self.step_down(StepDown::FencedWhileJoining { view });
        } else {
            self.learn_view(view, Evidence::FencedByPeer);
        }
    }

    pub(super) fn on_join_refused(&mut self, view: View, reason: JoinRefusal, now: Instant) {
        warn!(
            "join-refused by={} view={view} reason={reason}",
            self.views.installed.primary
        );
        // A live primary that wants us later (it waits for clients, or recovers): keep
        // trying. One that has a backup already does not need us.
        if let RoleState::Joining(joining) = &mut self.role {
            if reason != JoinRefusal::HasBackup {
                joining.give_up_at = now + self.cfg.join_give_up();
            }
        }
    }

    pub(super) fn install_snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        if !self.role.is_joining() {
            warn!("snapshot-ignored role={}", self.role.wire());
            return;
        }
        if let Err(why) = snapshot_is_whole(&snapshot) {
            warn!("snapshot-refused reason={why}");
            // Nothing more from that link may count: what follows builds on the snapshot.
            if let Some(peer) = self.forget_peer() {
                self.out.close(peer.conn, "bad snapshot");
            }
            self.retry_join(now);
            return;
        }
        self.registry.clear();
        self.leases.clear();
        for id in snapshot.clients {
            self.register(id);
        }
        self.history.restore(
            snapshot.results_first.0,
            snapshot.results,
            snapshot.results_base,
        );
        let clients = self.registry.len() as u32;
        // Members and voters beyond the clients the snapshot lists are corrupt: dropped.
        let known =
            |indexes: Vec<u32>| Members::from_indexes(indexes.into_iter().filter(|&i| i < clients));
        self.ballots.restore(
            snapshot
                .open
                .into_iter()
                .map(|b| Ballot::restore(b.seq, &known(b.voters), b.votes, now)),
        );
        self.views.installed = snapshot.view;
        let members = known(snapshot.members);
        self.leases.set_members(&members);
        self.set_members(members);
        self.views.saw(snapshot.view.number);
        info!(
            "snapshot-installed view={} clients={} committed={} open={}",
            self.views.installed,
            self.registry.len(),
            self.committed(),
            self.ballots.len()
        );
    }

    /// The primary installs us as backup of `view`, whose voters are `members`; no open
    /// ballot waits any more for the clients it `removed`.
    pub(super) fn on_install(
        &mut self,
        conn: ConnId,
        view: ViewInfo,
        members: Vec<u32>,
        removed: Vec<u32>,
    ) {
        if !(self.role.is_joining() || self.role.is_backup()) {
            return;
        }
        if view.backup != Some(self.cfg.listen) {
            warn!("install-refused view={view} reason=not-our-view");
            return;
        }
        let clients = self.registry.len() as u32;
        if members.iter().any(|&i| i >= clients) {
            warn!("install-refused view={view} reason=unknown-member");
            return;
        }
        let members = Members::from_indexes(members);
        info!(
            "view-change role=backup view={view} members={}",
            members.len()
        );
        self.drop_removed_voters(&Members::from_indexes(removed));
        self.views.installed = view;
        self.leases.set_members(&members);
        self.set_members(members);
        self.views.saw(view.number);
        self.role.become_backup();
        self.out
            .send_peer(conn, PeerMsg::InstallAck { view: view.number });
    }

    /// Ballot `seq` opened at the primary, with the members of the view we both installed
    /// (`voters` of them) as its electorate.
    pub(super) fn on_open(&mut self, seq: Seq, voters: u32, now: Instant) {
        let fits = voters as usize == self.views.members.len()
            && (self.ballots.len() as u64) < MAX_OPEN_BALLOTS;
        if seq != self.next_seq() || !fits {
            warn!(
                "replication-gap expected={} got={seq} voters={voters} members={} open={}",
                self.next_seq(),
                self.views.members.len(),
                self.ballots.len()
            );
            return;
        }
        self.ballots
            .push(Ballot::new(seq, &self.views.members, now));
    }

    /// The primary's final tally of ballot `seq`: record it, acknowledge it.
    pub(super) fn on_commit(&mut self, conn: ConnId, view: View, seq: Seq, tally: Tally) {
        match self.ballots.front() {
            Some(front) if front.seq == seq => {
                if front.tally() != tally {
                    // Our copy may lack votes the primary received; the primary's count wins.
                    debug!(
                        "commit-differs seq={seq} ours={:?} theirs={tally:?}",
                        front.tally()
                    );
                }
                self.ballots.pop_front();
                self.history.record(tally);
            }
            _ if seq <= self.committed() => {}
            _ => {
                warn!(
                    "replication-gap commit seq={seq} committed={}",
                    self.committed()
                );
                return;
            }
        }
        self.out.send_peer(conn, PeerMsg::CommitAck { view, seq });
    }

    // ----- the primary's side --------------------------------------------------------

    /// A server asks to join as our backup.
    pub(super) fn on_join_request(
        &mut self,
        conn: ConnId,
        node: NodeId,
        listen: SocketAddr,
        view: View,
        now: Instant,
    ) {
        self.views.saw(view);
        if let Some(reason) = self.join_refusal() {
            warn!("join-refused node={node} listen={listen} reason={reason}");
            let ours = self.views.installed;
            let msg = if view > View(0) && view < ours.number {
                PeerMsg::Fence { view: ours }
            } else {
                PeerMsg::JoinRefused {
                    view: ours.number,
                    reason,
                }
            };
            self.out.send_peer(conn, msg);
            self.out.close(conn, "join refused");
            return;
        }
        info!("join-request node={node} listen={listen} their_view={view}");
        self.timers.stop(Timer::JoinDeadline);
        if let Some(primary) = self.role.primary_mut() {
            // It came up and joined: if it dies, replace it at once (the spacing is for
            // backups that die before they ever join).
            primary.last_spawn = None;
            // The snapshot holds every vote counted so far.
            primary.pending_forward.clear();
        }
        self.peer = Some(Peer {
            conn,
            addr: listen,
            last_heard: now,
        });
        let snapshot = self.snapshot();
        self.out
            .send_peer(conn, PeerMsg::Snapshot(Box::new(snapshot)));
        // The snapshot and everything after it travel on one ordered connection, so the
        // backup is in sync from here on: propose the view that includes it.
        self.arm_peer_timers(now);
        self.propose(Some(listen), now);
        self.recommit();
        self.commit_ready(now);
    }

    fn join_refusal(&self) -> Option<JoinRefusal> {
        match &self.role {
            RoleState::Primary(_) if self.peer.is_some() => Some(JoinRefusal::HasBackup),
            RoleState::Primary(p) if p.is_recovering() => Some(JoinRefusal::Recovering),
            // Every view change needs clients as witnesses; a backup joins once they are here.
            RoleState::Primary(_) if !self.enough_members() => Some(JoinRefusal::WaitingForClients),
            RoleState::Primary(_) => None,
            RoleState::Joining(_) | RoleState::Backup | RoleState::SteppedDown { .. } => {
                Some(JoinRefusal::NotPrimary)
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            view: self.views.installed,
            clients: self.registry.ids(),
            members: self.views.members.iter().collect(),
            results_first: Seq(self.history.first()),
            results: self.history.results().to_vec(),
            results_base: self.history.base(),
            open: self
                .ballots
                .iter()
                .map(|b| OpenBallot {
                    seq: b.seq,
                    voters: b.electorate().iter().collect(),
                    votes: b.votes(),
                })
                .collect(),
        }
    }

    /// The joiner applied `Install`: the view is real, act in it.
    pub(super) fn on_install_ack(&mut self, view: View, now: Instant) {
        let pending = self.role.primary_mut().and_then(|p| {
            p.pending_install
                .take_if(|pending| pending.view.number == view)
        });
        match pending {
            Some(installing) => {
                let accepted = installing.members.majority();
                self.install(installing, accepted, now);
            }
            None => debug!("install-ack-ignored view={view}"),
        }
    }

    /// The backup recorded ballot `seq`'s final tally.
    pub(super) fn on_commit_ack(&mut self, seq: Seq, now: Instant) {
        let from_backup = self
            .peer
            .as_ref()
            .is_some_and(|p| Some(p.addr) == self.commit_backup());
        match self.ballots.get_mut(seq) {
            Some(ballot)
                if from_backup && ballot.state == super::ballot::BallotState::Committing =>
            {
                ballot.state = super::ballot::BallotState::Acked;
                self.commit_ready(now);
            }
            _ => debug!("commit-ack-ignored seq={seq}"),
        }
    }

    /// The backup whose ack a result needs before any client sees it: the installed
    /// view's, or the joiner's while its view waits for `InstallAck`.
    pub(super) fn commit_backup(&self) -> Option<SocketAddr> {
        self.role
            .primary()
            .and_then(|p| p.pending_install.as_ref())
            .and_then(|i| i.view.backup)
            .or(self.views.installed.backup)
    }

    /// The backup changed (joined, or a view installed): every complete ballot not yet
    /// told is committed again, so the backup of the current view has acknowledged it.
    pub(super) fn recommit(&mut self) {
        for ballot in self.ballots.iter_mut() {
            ballot.state = super::ballot::BallotState::Open;
        }
    }

    /// Sends the votes counted since the last `Forward`. They wait for the next `Commit` or
    /// heartbeat (or a full batch) instead of leaving every loop turn: the backup gets the
    /// same votes straight from the clients and, on a takeover, from their `Accept`s, so
    /// the copy is a second source, never the only one. Sent per turn, it cost the primary
    /// a write and the backup a wake-up per turn (~18 per ballot with 100 clients).
    pub(super) fn flush_forwards(&mut self) {
        let Some(primary) = self.role.primary_mut() else {
            return;
        };
        if primary.pending_forward.is_empty() {
            return;
        }
        let votes = std::mem::take(&mut primary.pending_forward);
        if let Some(peer) = &self.peer {
            let view = self.views.installed.number;
            self.out
                .send_peer(peer.conn, PeerMsg::Forward { view, votes });
        }
    }

    /// Our peer link carries a message only a primary sends: the peer believes itself
    /// primary of an older view. Tell it so and drop it.
    pub(super) fn fence_peer(&mut self, conn: ConnId, their_view: View) {
        warn!(
            "fence peer={} their_view={their_view} our_view={}",
            self.peer
                .as_ref()
                .map_or(String::new(), |p| p.addr.to_string()),
            self.views.installed.number
        );
        self.out.send_peer(
            conn,
            PeerMsg::Fence {
                view: self.views.installed,
            },
        );
        self.out.close(conn, "fenced");
        self.forget_peer();
    }

    // ----- liveness ------------------------------------------------------------------

    pub(super) fn arm_peer_timers(&mut self, now: Instant) {
        self.timers.set(Timer::Heartbeat, now);
        self.timers
            .set(Timer::PeerDead, now + self.cfg.peer_timeout());
    }

    /// [`Timer::Heartbeat`] fired: heartbeat to the peer now; the lease renewal to every
    /// client (primary only) with the next publish, or by [`Timer::LeaseRenewal`].
    pub(super) fn send_heartbeats(&mut self, now: Instant) {
        self.timers.set(Timer::Heartbeat, now + self.cfg.heartbeat);
        self.flush_forwards();
        if let Some(peer) = &self.peer {
            let view = self.views.installed.number;
            self.out.send_peer(peer.conn, PeerMsg::Heartbeat { view });
        }
        if self.role.primary().is_some_and(|p| !p.is_recovering()) {
            match self.cfg.lease_renewal_hold() {
                // The lease would lapse while the renewal waits: it leaves now.
                hold if hold.is_zero() || !self.holds_lease(now + hold) => {
                    self.timers.stop(Timer::LeaseRenewal);
                    self.send_lease_renewal(now);
                }
                hold => self.timers.set_if_stopped(Timer::LeaseRenewal, now + hold),
            }
        }
    }

    /// A publish takes the held lease renewal along, if one is held.
    pub(super) fn renew_held_leases(&mut self, now: Instant) {
        if self.timers.is_armed(Timer::LeaseRenewal) {
            self.timers.stop(Timer::LeaseRenewal);
            self.send_lease_renewal(now);
        }
    }

    /// Every client is sent a new renewal round, stamped now: a client starts its lease
    /// when it receives the round, never earlier.
    pub(super) fn send_lease_renewal(&mut self, now: Instant) {
        if self.role.primary().is_some_and(|p| !p.is_recovering()) {
            let round = self.leases.new_round(now, self.cfg.lease_rounds_kept());
            let view = self.views.installed.number;
            let lease_ms = self.lease_ms();
            self.broadcast(ServerMsg::Lease {
                view,
                round,
                lease_ms,
            });
        }
    }

    /// The peer link and what only it needs are gone.
    fn forget_peer(&mut self) -> Option<Peer> {
        if let Some(primary) = self.role.primary_mut() {
            primary.pending_forward.clear();
        }
        self.timers.stop(Timer::PeerDead);
        self.peer.take()
    }

    pub(super) fn peer_lost(&mut self, why: PeerLoss, now: Instant) {
        let role = self.role.wire();
        let view = self.views.installed.number;
        match self.forget_peer() {
            Some(p) => {
                warn!(
                    "peer-dead role={role} peer={} reason={} silent_ms={} view={view}",
                    p.addr,
                    why.as_str(),
                    now.saturating_duration_since(p.last_heard).as_millis(),
                );
                self.out.close(p.conn, "peer dead");
            }
            None => warn!("peer-dead role={role} reason={} view={view}", why.as_str()),
        }
        match &self.role {
            RoleState::Primary(_) => self.backup_lost(why, now),
            RoleState::Backup => self.take_over(now),
            // No state to take over with: try to join again.
            RoleState::Joining(_) => self.retry_join(now),
            RoleState::SteppedDown { .. } => {}
        }
    }

    /// The primary lost its backup: go on alone in a primary-only view, and replace it.
    ///
    /// The replacement is spawned (which kills the old process if it still runs) only from
    /// a view that a majority installed without that backup. Until then this primary may
    /// itself be the stale one, and the "dead" backup its successor.
    fn backup_lost(&mut self, why: PeerLoss, now: Instant) {
        if let Some(installing) = self
            .role
            .primary_mut()
            .and_then(|p| p.pending_install.take())
        {
            // The backup may have acted on its Install (and told clients of the view in
            // its Welcome): the view is real, so install it and lose its backup like any
            // other. Proposals then build on it.
            let accepted = installing.members.majority();
            self.install(installing, accepted, now);
        }
        // The configuration we are heading for: the pending proposal's, else the installed.
        let target_backup = match &self.views.proposal {
            Some(p) => p.view.backup,
            None => self.views.installed.backup,
        };
        if target_backup.is_some() {
            self.propose(None, now);
        }
        if self.views.installed.backup.is_none() {
            self.spawn_backup(why.as_str(), now);
        }
    }

    /// Spawns (or, if it is too soon after the last spawn, schedules) a replacement backup;
    /// also [`Timer::Respawn`]'s and [`Timer::JoinDeadline`]'s handler.
    pub(super) fn spawn_backup(&mut self, reason: &str, now: Instant) {
        // A backup already connected (joined, or joining) is the replacement: a pending
        // respawn must not kill it.
        let linked = self.peer.is_some();
        let Some(primary) = self.role.primary_mut().filter(|_| !linked) else {
            self.timers.stop(Timer::Respawn);
            return;
        };
        let earliest = primary.last_spawn.map_or(now, |t| t + self.cfg.heartbeat);
        if earliest > now {
            self.timers.set(Timer::Respawn, earliest);
            return;
        }
        info!("spawn-backup reason={reason}");
        primary.last_spawn = Some(now);
        self.timers.stop(Timer::Respawn);
        self.timers
            .set(Timer::JoinDeadline, now + self.cfg.join_deadline());
        self.out.push(Output::SpawnBackup);
    }
}

/// A snapshot's open ballots follow its results without a gap: it is input, and the
/// joiner's state must keep that rule.
fn snapshot_is_whole(snapshot: &Snapshot) -> Result<(), String> {
    // Room for every seq it names, and for the ballots after them.
    let headroom = (snapshot.results.len() + snapshot.open.len()) as u64 + MAX_OPEN_BALLOTS;
    let first = snapshot.results_first.0.max(1);
    if first.checked_add(headroom).is_none() {
        return Err(format!("results from {first} overflow a seq"));
    }
    if snapshot.open.len() as u64 > MAX_OPEN_BALLOTS {
        return Err(format!("{} open ballots", snapshot.open.len()));
    }
    let due = first + snapshot.results.len() as u64..;
    match due.zip(&snapshot.open).find(|(seq, b)| b.seq.0 != *seq) {
        Some((seq, b)) => Err(format!("ballot {} where {seq} is due", b.seq)),
        None => Ok(()),
    }
}
