//! The server replica as a pure state machine (the quinn-proto shape). This file is the
//! coordinator: the state, the getters, the polls, and one thin `handle_*` per kind of
//! input that dispatches to the file owning the rule.
//!
//! - getters take `&self`: [`Node::role`], [`Node::view`], [`Node::status`], ...;
//! - `handle_*` feed it an event from the network or the system, each with `now`;
//! - `poll_*` say what the caller must do next: [`Node::poll_output`] (frames to send,
//!   connections to open or close, a backup to spawn, an exit) and [`Node::poll_timeout`]
//!   (when to call [`Node::handle_timeout`]).
//!
//! It never touches a socket, a clock or a file. The reactor (`crate::reactor::server`) is
//! its production caller; the simulator (`crate::sim`) is the second one.
//!
//! Where each thing is:
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | [`NodeConfig`], its validation, every timing derived from it |
//! | `role.rs` | [`role::RoleState`]: what each role holds, the only transitions; [`StepDown`] |
//! | `timers.rs` | [`timers::Timer`], every deadline, when each is armed |
//! | `output.rs` | [`Output`], and the queue that folds results into one frame |
//! | `registry.rs` | registered clients, their indexes and connections |
//! | `leases.rs` | the primary's leases on its clients, renewal rounds, `LeaseAck` |
//! | `history.rs` | committed results, catch-up of clients that lack some |
//! | `ballot.rs` | one ballot's votes; the open ballots in seq order |
//! | `ballots.rs` | open, count, commit, publish, re-ask |
//! | `views.rs` | propose, accept, reject, install, take over, step down |
//! | `recovery.rs` | a cold restart rebuilding results from the clients' logs |
//! | `replication.rs` | the peer: heartbeats, join (both sides), snapshot, the commit stream, spawn |
//! | `clients.rs` | client hellos, reconnects, `Resend`, refusals, broadcasts |
//! | `invariants.rs` | [`Node::invariants`], checked after every input in debug builds |
//!
//! docs/PROTOCOL.md argues why the rules are safe.

mod ballot;
mod ballots;
mod clients;
mod config;
mod history;
mod invariants;
mod leases;
mod membership;
mod output;
mod recovery;
mod registry;
mod replication;
mod role;
mod timers;
mod views;

pub use config::{ConfigError, NodeConfig, StartRole};
pub use output::Output;
pub use role::{Evidence, StepDown};

use crate::link::ConnId;
use crate::proto::{
    ClientId, ClientMsg, Hello, PeerMsg, PeerStatus, Role, Seq, StatusReply, Tally, View, ViewInfo,
};
use ballot::OpenBallots;
use history::History;
use leases::Leases;
use log::{debug, info};
use output::Outbox;
use recovery::Report;
use registry::Registry;
use replication::{Peer, PeerLoss};
use role::{Joining, Primary, RoleState};
use std::net::SocketAddr;
use std::time::Instant;
use timers::{Timer, TimerTable};
use views::Views;

/// The most clients for which a debug build checks the invariants after every input.
const DEBUG_CHECK_MAX_CLIENTS: usize = 1024;

pub struct Node {
    cfg: NodeConfig,
    role: RoleState,
    views: Views,
    registry: Registry,
    leases: Leases,
    history: History,
    ballots: OpenBallots,
    peer: Option<Peer>,
    timers: TimerTable,
    out: Outbox,
}

impl Node {
    /// `cfg` must have passed [`NodeConfig::validate`].
    pub fn new(cfg: NodeConfig, now: Instant) -> Node {
        if let Err(e) = cfg.validate() {
            panic!("NodeConfig::validate first: {e}");
        }
        let (role, view) = match &cfg.start {
            StartRole::Primary => (
                RoleState::Primary(Primary {
                    first_ballot_at: Some(now + cfg.first_ballot_wait()),
                    ..Primary::default()
                }),
                ViewInfo {
                    number: View(1),
                    primary: cfg.listen,
                    backup: None,
                },
            ),
            StartRole::Backup { join } => (
                RoleState::Joining(Joining {
                    give_up_at: now + cfg.join_give_up(),
                }),
                ViewInfo {
                    number: View(0),
                    primary: *join,
                    backup: None,
                },
            ),
        };
        let mut node = Node {
            role,
            views: Views::new(view),
            registry: Registry::default(),
            leases: Leases::new(cfg.peer_timeout()),
            history: History::default(),
            ballots: OpenBallots::default(),
            peer: None,
            timers: TimerTable::default(),
            out: Outbox::default(),
            cfg,
        };
        node.start(now);
        node.debug_check("new");
        node
    }

    fn start(&mut self, now: Instant) {
        let cfg = &self.cfg;
        if self.role.is_primary() {
            info!(
                "started role=primary node={} view={} listen={}",
                cfg.node, self.views.installed, cfg.listen
            );
            self.timers.set(Timer::Heartbeat, now);
            self.arm_open_ballot(now);
            if self.cfg.spawn_backup {
                self.spawn_backup("start", now);
            }
        } else {
            info!(
                "started role=joining node={} primary={} join_in_ms={}",
                cfg.node,
                self.views.installed.primary,
                cfg.backup_start_delay.as_millis()
            );
            self.timers.set(Timer::Join, now + cfg.backup_start_delay);
        }
    }

    // ----- getters -------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role.wire()
    }

    /// The installed view.
    pub fn view(&self) -> ViewInfo {
        self.views.installed
    }

    pub fn listen(&self) -> SocketAddr {
        self.cfg.listen
    }

    /// The view this server proposed and is waiting to install, if any.
    pub fn proposing(&self) -> Option<ViewInfo> {
        self.views.proposal.as_ref().map(|p| p.view)
    }

    /// Whether this server acts as primary now: installed, not stepped down, not
    /// rebuilding its state, and it has opened a ballot or holds results (a fresh primary
    /// that has done neither has told no client anything yet).
    pub fn is_acting_primary(&self) -> bool {
        self.role.primary().is_some_and(|p| !p.is_recovering()) && !self.is_pristine()
    }

    /// Whether what clients send here may wait to be read: an installed backup that
    /// proposes nothing acts on none of it but a `Stale` (a stale backup's proposals are
    /// refused anyway, so its step-down can wait too). It keeps their votes in case it
    /// takes over, and to take over it first proposes, which ends the wait. So its
    /// reactor may read client links in batches instead of waking for every vote.
    pub fn client_input_can_wait(&self) -> bool {
        self.role.is_backup() && self.views.proposal.is_none()
    }

    /// A cold-restarted primary rebuilding its results from the clients' logs.
    pub fn is_recovering(&self) -> bool {
        self.role.is_recovering()
    }

    /// Only a server started as primary that has installed nothing but its first view and
    /// done nothing yet can meet a cold restart: a backup that took over (its own
    /// `Primary`, no first-ballot wait) is the cluster's history, not a fresh one.
    fn may_detect_cold_restart(&self) -> bool {
        let started_fresh = self
            .role
            .primary()
            .is_some_and(|p| p.first_ballot_at.is_some() && !p.is_recovering());
        started_fresh && self.views.installed.number == View(1) && self.is_pristine()
    }

    /// Nothing has happened here yet: no ballot opened, no result known.
    fn is_pristine(&self) -> bool {
        self.role.primary().is_some_and(|p| p.last_open.is_none())
            && self.history.first() == 1
            && self.history.is_empty()
            && self.ballots.is_empty()
    }

    pub fn has_exited(&self) -> bool {
        self.role.has_stepped_down()
    }

    pub fn committed(&self) -> Seq {
        self.history.committed()
    }

    pub fn next_seq(&self) -> Seq {
        Seq(self.committed().0 + self.ballots.len() as u64 + 1)
    }

    /// The committed results held, the first being ballot `.0`.
    pub fn results(&self) -> (Seq, &[Tally]) {
        (Seq(self.history.first()), self.history.results())
    }

    /// Whether client `id` is a member, or an open ballot waits for its vote.
    pub fn waits_for(&self, id: &ClientId) -> bool {
        let idx = self.registry.index_of(id);
        idx.is_some_and(|i| self.views.members.contains(i) || self.awaited(i))
    }

    /// The electorate of each open ballot after `after`: the members it counts.
    pub fn electorates_after(&self, after: Seq) -> Vec<(Seq, Vec<ClientId>)> {
        let ballots = self.ballots.iter().filter(|b| b.seq > after);
        ballots
            .map(|b| {
                let electorate = b.electorate();
                let names = electorate.iter().map(|i| self.registry.id(i).clone());
                (b.seq, names.collect())
            })
            .collect()
    }

    /// A majority of the clients hold our lease: no one else can become primary before it
    /// runs out, so we may open ballots and tell results.
    pub fn holds_lease(&self, now: Instant) -> bool {
        self.leases.held(now)
    }

    pub fn status(&self, now: Instant) -> StatusReply {
        StatusReply {
            node: self.cfg.node,
            role: self.role(),
            view: self.views.installed,
            next_seq: self.next_seq(),
            committed: self.committed(),
            open_ballots: self.ballots.len() as u64,
            proposing: self.proposing().map(|v| v.number),
            clients: self.registry.ids(),
            connected_clients: self.registry.conn_count() as u64,
            peer: self.peer_status(now),
            members: self.member_status(now),
            connections: None,
            event_loop: None,
        }
    }

    fn peer_status(&self, now: Instant) -> Option<PeerStatus> {
        if let Some(p) = &self.peer {
            return Some(PeerStatus {
                addr: Some(p.addr),
                connected: true,
                last_heard_ms: Some(now.saturating_duration_since(p.last_heard).as_millis() as u64),
                alive: true,
            });
        }
        let addr = match self.role() {
            Role::Primary => self.views.installed.backup,
            Role::Joining | Role::Backup => Some(self.views.installed.primary),
        };
        addr.map(|addr| PeerStatus {
            addr: Some(addr),
            connected: false,
            last_heard_ms: None,
            alive: false,
        })
    }

    /// One line on the state, for a simulator failure report.
    pub fn describe(&self, now: Instant) -> String {
        let front_missing = self.ballots.front().map(|b| b.missing());
        format!(
            "role={} view={} proposing={:?} committed={} ballots={:?} peer={:?} lease={} clients={} timers={:?} conns={:?} missing={:?}",
            self.role(),
            self.views.installed,
            self.proposing().map(|v| v.number.0),
            self.committed(),
            self.ballots
                .iter()
                .map(|b| (b.seq.0, b.state, b.complete()))
                .collect::<Vec<_>>(),
            self.peer.as_ref().map(|p| p.addr),
            self.holds_lease(now),
            self.registry.len(),
            self.timers,
            (0..self.registry.len() as u32)
                .map(|i| self.registry.conn(i).map(|c| c.slot))
                .collect::<Vec<_>>(),
            front_missing,
        )
    }

    // ----- polls ---------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.earliest()
    }

    // ----- inputs --------------------------------------------------------------------

    /// The first frame of a connection someone opened to us.
    pub fn handle_hello(&mut self, conn: ConnId, hello: Hello, now: Instant) {
        if self.has_exited() {
            return;
        }
        match hello {
            Hello::Client {
                id,
                last_seq,
                view,
                digest,
            } => self.on_client_hello(conn, id, last_seq, view, digest, now),
            Hello::Peer { node, listen, view } => {
                self.on_join_request(conn, node, listen, view, now)
            }
            Hello::Status => {
                let status = Box::new(self.status(now));
                self.out.push(Output::Status(conn, status));
                self.out.close(conn, "status answered");
            }
            Hello::Remove { id } => self.on_remove_request(conn, id, now),
        }
        self.debug_check("handle_hello");
    }

    /// A connection we dialed is up.
    pub fn handle_connected(&mut self, conn: ConnId, addr: SocketAddr, now: Instant) {
        self.on_join_dialed(conn, addr, now);
        self.debug_check("handle_connected");
    }

    pub fn handle_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        if self.role.is_joining() && addr == self.views.installed.primary {
            log::warn!(
                "join-failed primary={addr} retry_in_ms={}",
                self.cfg.heartbeat.as_millis()
            );
            self.retry_join(now);
        }
        self.debug_check("handle_dial_failed");
    }

    /// A connection closed (by either side, or by the reactor after a bad frame).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        if self.has_exited() {
            return;
        }
        if !self.client_conn_closed(conn, now) && self.peer.as_ref().is_some_and(|p| p.conn == conn)
        {
            self.peer_lost(PeerLoss::Closed, now);
        }
        self.debug_check("handle_closed");
    }

    /// The backup this server spawned has exited (SIGCHLD).
    pub fn handle_child_exit(&mut self, now: Instant) {
        // With a peer linked, the exited child may not be that peer (a backup started by
        // hand can be in service); if it is, its connection's close tells us too.
        if self.role.is_primary() && self.peer.is_none() {
            self.peer_lost(PeerLoss::ChildExited, now);
        }
        self.debug_check("handle_child_exit");
    }

    /// Everything queued for `conn` is written (after [`Output::WhenDrained`]).
    pub fn handle_drained(&mut self, conn: ConnId) {
        self.continue_catch_up(conn);
        self.debug_check("handle_drained");
    }

    pub fn handle_client_msg(&mut self, conn: ConnId, msg: ClientMsg, now: Instant) {
        if self.has_exited() {
            return;
        }
        self.on_client_msg(conn, msg, now);
        self.debug_check("handle_client_msg");
    }

    fn on_client_msg(&mut self, conn: ConnId, msg: ClientMsg, now: Instant) {
        if let ClientMsg::Stale { accepted } = &msg {
            // Only from a client that said hello here: a refused connection is nobody.
            if self.registry.is_client_conn(conn) {
                self.learn_view(*accepted, Evidence::ClientSaysStale);
            }
            return;
        }
        let Some(idx) = self.registry.resolve(conn) else {
            debug!("client-msg-dropped reason=unregistered conn={conn}");
            return;
        };
        match msg {
            ClientMsg::Votes { view: _, votes } => {
                self.count_votes(votes.into_iter().map(|(seq, yes)| (idx, seq, yes)), now);
            }
            ClientMsg::Resend { view, from } => self.on_resend(conn, view, from, now),
            ClientMsg::Accept {
                view,
                last_seq,
                votes,
                tail,
                tail_base,
                followed_members,
                promised_members,
            } => {
                let report = Report {
                    tail,
                    tail_base,
                    followed: followed_members,
                    promised: promised_members,
                };
                self.on_accept(idx, view, last_seq, votes, report, now)
            }
            ClientMsg::Reject {
                proposed,
                accepted,
                promised,
                retry_after_ms,
            } => self.on_reject(proposed, accepted, promised, retry_after_ms, now),
            ClientMsg::LeaseAck {
                view: _,
                round,
                logged,
            } => self.on_lease_ack(idx, round, logged, now),
            ClientMsg::Leave { view: _ } => self.on_leave(idx, now),
            ClientMsg::Stale { .. } => {}
        }
    }

    pub fn handle_peer_msg(&mut self, conn: ConnId, msg: PeerMsg, now: Instant) {
        if self.has_exited() {
            return;
        }
        self.on_peer_msg(conn, msg, now);
        self.debug_check("handle_peer_msg");
    }

    fn on_peer_msg(&mut self, conn: ConnId, msg: PeerMsg, now: Instant) {
        match msg {
            // These two come on a connection that may not be (or no longer be) our peer
            // link: each checks that itself.
            PeerMsg::Fence { view } => self.on_fence(conn, view),
            PeerMsg::JoinRefused { view, reason } => self.on_join_refused(view, reason, now),
            PeerMsg::Snapshot(_)
            | PeerMsg::Install { .. }
            | PeerMsg::InstallAck { .. }
            | PeerMsg::Heartbeat { .. }
            | PeerMsg::Register { .. }
            | PeerMsg::Open { .. }
            | PeerMsg::Forward { .. }
            | PeerMsg::Commit { .. }
            | PeerMsg::CommitAck { .. } => self.on_peer_stream(conn, msg, now),
        }
    }

    /// A message of the peer link's live stream: only from our current peer.
    fn on_peer_stream(&mut self, conn: ConnId, msg: PeerMsg, now: Instant) {
        let Some(peer) = self.peer.as_mut().filter(|p| p.conn == conn) else {
            self.out.close(conn, "peer message from a stale connection");
            return;
        };
        peer.last_heard = now;
        self.timers
            .set(Timer::PeerDead, now + self.cfg.peer_timeout());
        // Only a primary sends these; a primary hearing them from its peer is talking to a
        // server that still believes itself primary of an older view.
        if self.role.is_primary() && msg.is_from_a_primary() {
            self.fence_peer(conn, msg.view());
            return;
        }
        match msg {
            PeerMsg::Heartbeat { .. } => {}
            PeerMsg::Snapshot(snapshot) => self.install_snapshot(*snapshot, now),
            PeerMsg::Install {
                view,
                members,
                removed,
            } => self.on_install(conn, view, members, removed),
            PeerMsg::InstallAck { view } => self.on_install_ack(view, now),
            PeerMsg::Register { view: _, client } => {
                self.register(client);
            }
            PeerMsg::Open {
                view: _,
                seq,
                voters,
            } => self.on_open(seq, voters, now),
            PeerMsg::Forward { view: _, votes } => self.count_votes(
                votes
                    .into_iter()
                    .map(|(seq, client, yes)| (client, seq, yes)),
                now,
            ),
            PeerMsg::Commit { view, seq, tally } => self.on_commit(conn, view, seq, tally),
            PeerMsg::CommitAck { view: _, seq } => self.on_commit_ack(seq, now),
            PeerMsg::JoinRefused { .. } | PeerMsg::Fence { .. } => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            if self.timers.take_due(timer, now) {
                self.on_timer(timer, now);
            }
        }
        self.debug_check("handle_timeout");
    }

    /// In the middle of a long turn of its host: sends the heartbeat to the peer if it is
    /// due, with the lease renewal only if the lease would lapse within its hold (a held
    /// one waits for the turn's end), and nothing else; returns whether it did. A timer that acts on silence (`PeerDead`, `Reask`, `Absent`, …)
    /// waits for the turn's end, after the input still unread in the batch (which may be
    /// the very frame it waits for) has been handled.
    pub fn handle_heartbeat_due(&mut self, now: Instant) -> bool {
        let due = self.timers.take_due(Timer::Heartbeat, now);
        if due {
            self.on_timer(Timer::Heartbeat, now);
            self.debug_check("handle_heartbeat_due");
        }
        due
    }

    /// Every timer's handler; `timers.rs` says when each is armed.
    fn on_timer(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Join => self.start_join(),
            Timer::Heartbeat => self.send_heartbeats(now),
            Timer::LeaseRenewal => self.send_lease_renewal(now),
            Timer::PeerDead => {
                if self.peer.is_some() {
                    self.peer_lost(PeerLoss::Silent, now);
                }
            }
            Timer::Propose => self.send_proposal(now),
            Timer::Respawn => self.spawn_backup("respawn", now),
            Timer::JoinDeadline => {
                log::warn!(
                    "backup-join-overdue waited_ms={}",
                    self.cfg.join_deadline().as_millis()
                );
                self.spawn_backup("join-overdue", now);
            }
            Timer::Reask => self.reask_missing_voters(now),
            Timer::OpenBallot => self.open_ballots(now),
            Timer::Absent => self.remove_absent(now),
        }
    }

    /// Panics, naming the broken invariant and the input after which it broke, in debug
    /// builds; the simulator checks [`Node::invariants`] itself in every build. The check
    /// is O(clients): above `DEBUG_CHECK_MAX_CLIENTS` a debug build skips it, or a ballot
    /// would cost O(clients²) there.
    fn debug_check(&self, after: &str) {
        if cfg!(debug_assertions) && self.registry.len() <= DEBUG_CHECK_MAX_CLIENTS {
            if let Err(broken) = self.invariants() {
                panic!("invariant broken after {after}: {broken}");
            }
        }
    }
}

impl PeerMsg {
    /// The view a peer message speaks for.
    fn view(&self) -> View {
        match self {
            PeerMsg::Snapshot(s) => s.view.number,
            PeerMsg::Install { view, .. } | PeerMsg::Fence { view } => view.number,
            PeerMsg::Heartbeat { view }
            | PeerMsg::Register { view, .. }
            | PeerMsg::Open { view, .. }
            | PeerMsg::Forward { view, .. }
            | PeerMsg::Commit { view, .. }
            | PeerMsg::CommitAck { view, .. }
            | PeerMsg::InstallAck { view }
            | PeerMsg::JoinRefused { view, .. } => *view,
        }
    }

    /// Messages only a primary sends to its backup.
    fn is_from_a_primary(&self) -> bool {
        match self {
            PeerMsg::Snapshot(_)
            | PeerMsg::Install { .. }
            | PeerMsg::Register { .. }
            | PeerMsg::Open { .. }
            | PeerMsg::Forward { .. }
            | PeerMsg::Commit { .. }
            | PeerMsg::JoinRefused { .. }
            | PeerMsg::Fence { .. } => true,
            PeerMsg::Heartbeat { .. } | PeerMsg::CommitAck { .. } | PeerMsg::InstallAck { .. } => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
