//! The server replica as a pure state machine (the quinn-proto shape).
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
//! Every state transition of a server is in this file; every timer is a field of
//! [`Timers`]. The rules, in short (docs/PROTOCOL.md argues why they are safe):
//! - a server acts in a view only once a majority of the registered clients accepted it
//!   (a [`Proposal`]); clients refuse a new primary while the current one's lease holds;
//! - while a backup is in the view, a result reaches clients only after the backup
//!   acknowledged it (commit before telling);
//! - a server that learns of an installed view newer than its own, in which it is not
//!   primary, steps down: it exits.

mod ballot;

use crate::link::ConnId;
use crate::proto::limits::{
    CATCHUP_BURST, MAX_CLIENTS, MAX_CLIENT_ID_LEN, MAX_FORWARD_BATCH, MAX_OPEN_BALLOTS,
    MAX_RESULTS_HELD, MAX_RESULTS_PER_FRAME,
};
use crate::proto::messages::OpenBallot;
use crate::proto::{
    ClientId, ClientMsg, Hello, NodeId, PeerMsg, PeerStatus, Role, Seq, ServerMsg, Snapshot,
    StatusReply, Tally, View, ViewInfo,
};
use ballot::{Ballot, BallotState, VoteOutcome};
use log::{debug, info, warn};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How a server starts.
#[derive(Clone, Debug)]
pub enum StartRole {
    Primary,
    Backup { join: SocketAddr },
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node: NodeId,
    /// Where this server serves clients and peers (the bound address, never port 0).
    pub listen: SocketAddr,
    pub start: StartRole,
    pub heartbeat: Duration,
    /// Heartbeat intervals without a frame from the peer before it counts as dead.
    pub miss_limit: u32,
    /// How long a backup waits after starting before it joins (a heavyweight start).
    pub backup_start_delay: Duration,
    /// Least time between two ballot openings.
    pub ballot_interval: Duration,
    /// Open ballots 1..=N, then stop opening (keep serving).
    pub ballots: Option<u64>,
    /// Open ballot 1 only once this many clients registered.
    pub min_clients: usize,
    /// Most ballots open at once.
    pub window: u64,
    /// Spawn a backup at start (primary only; `--no-spawn` clears it).
    pub spawn_backup: bool,
}

impl NodeConfig {
    /// Silence from the peer longer than this means it is dead. Clients hold a primary's
    /// lease for the same time.
    pub fn peer_timeout(&self) -> Duration {
        self.heartbeat * self.miss_limit
    }

    /// A ballot that has waited this long for votes re-asks the voters it lacks.
    fn vote_timeout(&self) -> Duration {
        self.peer_timeout()
    }

    /// A spawned backup that has not joined by then is replaced.
    fn join_deadline(&self) -> Duration {
        self.backup_start_delay + self.peer_timeout() * 2
    }
}

/// Why a primary refuses a joiner when it has a backup already: the one refusal after
/// which the joiner stops trying once its own deadline passes.
const REFUSED_HAS_BACKUP: &str = "a backup is already in service";

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Open a connection to `addr`; report back with [`Node::handle_connected`] or
    /// [`Node::handle_dial_failed`].
    Dial(SocketAddr),
    /// Send the first frame on a connection this node dialed.
    Hello(ConnId, Hello),
    ToClient(ConnId, ServerMsg),
    /// The same message to each of these client connections: encoded once, not per client.
    ToClients(Vec<ConnId>, ServerMsg),
    ToPeer(ConnId, PeerMsg),
    /// Answer a status connection; close it once written.
    Status(ConnId, Box<StatusReply>),
    /// Close the connection once what is queued for it is written.
    Close(ConnId, &'static str),
    /// fork/exec a backup on `--backup-listen`, first killing (and reaping) the one we
    /// spawned before if it still runs: it was declared dead.
    SpawnBackup,
    /// Step down: flush what is queued, then exit. This server was replaced.
    Exit(String),
    /// Call [`Node::handle_drained`] once everything queued for this connection is written
    /// (a catch-up goes out a burst at a time, not all into one output buffer).
    WhenDrained(ConnId),
}

/// Every deadline of a node. `None`: not armed.
#[derive(Clone, Debug, Default)]
struct Timers {
    /// Send the next heartbeat to the peer and lease renewals to the clients.
    heartbeat: Option<Instant>,
    /// The peer is dead if nothing arrives from it by then.
    peer_dead: Option<Instant>,
    /// The earliest moment the primary may open the next ballot.
    open_ballot: Option<Instant>,
    /// A joining backup dials the primary.
    join: Option<Instant>,
    /// Re-ask the missing voters of the open ballots.
    reask: Option<Instant>,
    /// Re-send the pending proposal to the clients that have not accepted it.
    propose: Option<Instant>,
    /// Spawn a backup (spawns are spaced by one heartbeat interval at least).
    respawn: Option<Instant>,
    /// The backup we spawned must have joined by then.
    join_deadline: Option<Instant>,
}

impl Timers {
    fn earliest(&self) -> Option<Instant> {
        [
            self.heartbeat,
            self.peer_dead,
            self.open_ballot,
            self.join,
            self.reask,
            self.propose,
            self.respawn,
            self.join_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The other replica, as seen from here.
#[derive(Clone, Debug)]
struct Peer {
    conn: ConnId,
    /// Its client-facing address (the backup's `listen`, or the primary we joined).
    addr: SocketAddr,
    last_heard: Instant,
}

#[derive(Clone, Debug)]
struct ClientRecord {
    id: ClientId,
    conn: Option<ConnId>,
    /// When the newest lease renewal this client acknowledged was sent: the primary holds
    /// its lease until then plus the lease time.
    lease_from: Option<Instant>,
}

/// The answer to "until when does a majority of the clients hold our lease?", so that
/// asking costs O(1) instead of a pass over every client: with 10,000 clients each
/// `LeaseAck` asking twice was quadratic per heartbeat (64 % of the primary's time).
#[derive(Clone, Copy, Debug, Default)]
struct LeaseCache {
    /// A majority's leases run at least until then (None: not held, or not known).
    held_until: Option<Instant>,
    /// No lease changed since `held_until` was computed. An extension (an ack, an accept)
    /// keeps `held_until` as a lower bound but makes the cache not fresh; a voided lease or
    /// a new client (a larger majority) forgets it.
    fresh: bool,
}

/// A client connection as a server knows it. A backup may hear from a client before the
/// primary's `Register` for it arrives; until then it knows only the name.
#[derive(Clone, Debug)]
enum ClientConn {
    Known(u32),
    Unregistered(ClientId),
}

/// A view this server wants to act in, waiting for a majority of the clients.
#[derive(Clone, Debug)]
struct Proposal {
    view: ViewInfo,
    /// `accepted[i]`: client i accepted.
    accepted: Vec<bool>,
    /// When it was first sent: an accept grants the proposer the client's lease from then.
    sent: Option<Instant>,
}

impl Proposal {
    fn count(&self) -> usize {
        self.accepted.iter().filter(|a| **a).count()
    }
}

/// Why a peer counts as gone.
#[derive(Clone, Copy, Debug)]
enum PeerLoss {
    Silent,
    Closed,
    ChildExited,
}

impl PeerLoss {
    fn as_str(self) -> &'static str {
        match self {
            PeerLoss::Silent => "missed-heartbeats",
            PeerLoss::Closed => "connection-closed",
            PeerLoss::ChildExited => "child-exited",
        }
    }
}

pub struct Node {
    cfg: NodeConfig,
    role: Role,
    /// The installed view: the one this server acts in.
    view: ViewInfo,
    proposal: Option<Proposal>,
    /// A view with a joiner that a majority accepted, sent to the joiner as `Install`:
    /// installed here when the joiner acknowledges it.
    pending_install: Option<ViewInfo>,
    /// The highest view number heard of anywhere; proposals go above it.
    highest_seen: View,
    /// Registered clients; the index is the client's number in ballots and on the peer link.
    clients: Vec<ClientRecord>,
    /// What [`Node::holds_lease`] last computed; see [`LeaseCache`].
    lease_cache: Cell<LeaseCache>,
    /// Votes counted and not yet forwarded to the peer: `(seq, client, yes)`.
    pending_forward: Vec<(Seq, u32, bool)>,
    /// A joiner that still has no primary to join by then gives up (exits): it has no
    /// state to serve with, and its primary, if alive, has replaced it by then.
    join_give_up: Option<Instant>,
    /// Client connections being caught up: the next seq to send each.
    catching_up: HashMap<ConnId, Seq>,
    /// `Resend`s from clients that follow a view newer than ours (ours is being
    /// installed): answered when it is.
    resend_after_install: HashMap<ConnId, Seq>,
    client_index: HashMap<ClientId, u32>,
    client_conns: BTreeMap<ConnId, ClientConn>,
    peer: Option<Peer>,
    /// Committed results: `results[i]` is ballot `results_first + i`. Only a primary
    /// rebuilt by a cold restart starts above 1.
    results_first: u64,
    results: Vec<Tally>,
    /// A fresh primary that found clients with history (a cold restart): it rebuilds the
    /// results from their logs before it acts.
    recovering: bool,
    /// The longest log tail the clients reported while recovering: (its last seq, tallies).
    recovered: Option<(Seq, Vec<Tally>)>,
    /// Open ballots, in seq order, the first one being the seq after the last result.
    ballots: VecDeque<Ballot>,
    /// When the primary opened its latest ballot (spacing by `--ballot-interval-ms`).
    last_open: Option<Instant>,
    last_spawn: Option<Instant>,
    /// Lease renewals sent and not yet too old to matter: (round, when sent).
    lease_rounds: VecDeque<(u64, Instant)>,
    next_lease_round: u64,
    timers: Timers,
    out: VecDeque<Output>,
    exited: bool,
}

impl Node {
    pub fn new(cfg: NodeConfig, now: Instant) -> Node {
        let (role, view) = match &cfg.start {
            StartRole::Primary => (
                Role::Primary,
                ViewInfo {
                    number: View(1),
                    primary: cfg.listen,
                    backup: None,
                },
            ),
            StartRole::Backup { join } => (
                Role::Joining,
                ViewInfo {
                    number: View(0),
                    primary: *join,
                    backup: None,
                },
            ),
        };
        let mut node = Node {
            role,
            view,
            proposal: None,
            pending_install: None,
            highest_seen: view.number,
            clients: Vec::new(),
            lease_cache: Cell::default(),
            pending_forward: Vec::new(),
            join_give_up: None,
            catching_up: HashMap::new(),
            resend_after_install: HashMap::new(),
            client_index: HashMap::new(),
            client_conns: BTreeMap::new(),
            peer: None,
            results_first: 1,
            results: Vec::new(),
            recovering: false,
            recovered: None,
            ballots: VecDeque::new(),
            last_open: None,
            last_spawn: None,
            lease_rounds: VecDeque::new(),
            next_lease_round: 1,
            timers: Timers::default(),
            out: VecDeque::new(),
            exited: false,
            cfg,
        };
        match node.role {
            Role::Primary => {
                info!(
                    "started role=primary node={} view={} listen={}",
                    node.cfg.node, node.view, node.cfg.listen
                );
                node.timers.heartbeat = Some(now);
                node.arm_open_ballot(now);
                if node.cfg.spawn_backup {
                    node.spawn_backup("start", now);
                }
            }
            Role::Joining | Role::Backup => {
                info!(
                    "started role=joining node={} primary={} join_in_ms={}",
                    node.cfg.node,
                    node.view.primary,
                    node.cfg.backup_start_delay.as_millis()
                );
                node.timers.join = Some(now + node.cfg.backup_start_delay);
                node.join_give_up = Some(now + node.cfg.join_deadline() + node.cfg.peer_timeout());
            }
        }
        node
    }

    // ----- getters -------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    /// The installed view.
    pub fn view(&self) -> ViewInfo {
        self.view
    }

    pub fn listen(&self) -> SocketAddr {
        self.cfg.listen
    }

    /// The view this server proposed and is waiting to install, if any.
    pub fn proposing(&self) -> Option<ViewInfo> {
        self.proposal.as_ref().map(|p| p.view)
    }

    /// Whether this server acts as primary now: installed, not stepped down, not
    /// rebuilding its state, and it has opened a ballot or holds results (a fresh primary
    /// that has done neither has told no client anything yet).
    pub fn is_acting_primary(&self) -> bool {
        self.role == Role::Primary && !self.exited && !self.recovering && !self.is_pristine()
    }

    /// Whether what clients send here may wait to be read: an installed backup that
    /// proposes nothing acts on none of it but a `Stale` (a stale backup's proposals are
    /// refused anyway, so its step-down can wait too). It keeps their votes in case it
    /// takes over, and to take over it first proposes, which ends the wait. So its
    /// reactor may read client links in batches instead of waking for every vote.
    pub fn client_input_can_wait(&self) -> bool {
        self.role == Role::Backup && self.proposal.is_none()
    }

    /// A cold-restarted primary rebuilding its results from the clients' logs.
    pub fn is_recovering(&self) -> bool {
        self.recovering
    }

    /// Nothing has happened here yet: no ballot opened, no result known.
    fn is_pristine(&self) -> bool {
        self.role == Role::Primary
            && self.results_first == 1
            && self.results.is_empty()
            && self.ballots.is_empty()
            && self.last_open.is_none()
    }

    /// One line on the state, for a simulator failure report.
    pub fn describe(&self, now: Instant) -> String {
        format!(
            "role={} view={} proposing={:?} committed={} ballots={:?} peer={:?} lease={} clients={} timers={:?} conns={:?} missing={:?}",
            self.role,
            self.view,
            self.proposal.as_ref().map(|p| p.view.number.0),
            self.committed(),
            self.ballots
                .iter()
                .map(|b| (b.seq.0, b.state, b.complete()))
                .collect::<Vec<_>>(),
            self.peer.as_ref().map(|p| p.addr),
            self.holds_lease(now),
            self.clients.len(),
            self.timers,
            self.clients.iter().map(|c| c.conn.map(|c| c.slot)).collect::<Vec<_>>(),
            self.ballots.front().map(|b| (0..b.voters).filter(|i| b.awaits(*i)).collect::<Vec<_>>())
        )
    }

    pub fn has_exited(&self) -> bool {
        self.exited
    }

    pub fn committed(&self) -> Seq {
        Seq(self.results_first - 1 + self.results.len() as u64)
    }

    pub fn next_seq(&self) -> Seq {
        Seq(self.committed().0 + self.ballots.len() as u64 + 1)
    }

    /// The committed results held, the first being ballot `.0`.
    pub fn results(&self) -> (Seq, &[Tally]) {
        (Seq(self.results_first), &self.results)
    }

    pub fn status(&self, now: Instant) -> StatusReply {
        StatusReply {
            node: self.cfg.node,
            role: self.role,
            view: self.view,
            next_seq: self.next_seq(),
            committed: self.committed(),
            open_ballots: self.ballots.len() as u64,
            proposing: self.proposal.as_ref().map(|p| p.view.number),
            clients: self.clients.iter().map(|c| c.id.clone()).collect(),
            connected_clients: self.client_conns.len() as u64,
            peer: self.peer_status(now),
        }
    }

    fn peer_status(&self, now: Instant) -> Option<PeerStatus> {
        match &self.peer {
            Some(p) => Some(PeerStatus {
                addr: Some(p.addr),
                connected: true,
                last_heard_ms: Some(now.saturating_duration_since(p.last_heard).as_millis() as u64),
                alive: true,
            }),
            None => {
                let addr = match self.role {
                    Role::Primary => self.view.backup,
                    Role::Joining | Role::Backup => Some(self.view.primary),
                };
                addr.map(|addr| PeerStatus {
                    addr: Some(addr),
                    connected: false,
                    last_heard_ms: None,
                    alive: false,
                })
            }
        }
    }

    // ----- polls ---------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        self.timers.earliest()
    }

    // ----- inputs --------------------------------------------------------------------

    /// The first frame of a connection someone opened to us.
    pub fn handle_hello(&mut self, conn: ConnId, hello: Hello, now: Instant) {
        if self.exited {
            return;
        }
        match hello {
            Hello::Client { id, last_seq, view } => {
                self.client_hello(conn, id, last_seq, view, now)
            }
            Hello::Peer { node, listen, view } => self.peer_hello(conn, node, listen, view, now),
            Hello::Status => {
                let status = Box::new(self.status(now));
                self.out.push_back(Output::Status(conn, status));
                self.out.push_back(Output::Close(conn, "status answered"));
            }
        }
    }

    /// A connection we dialed is up.
    pub fn handle_connected(&mut self, conn: ConnId, addr: SocketAddr, now: Instant) {
        if self.exited
            || self.role != Role::Joining
            || addr != self.view.primary
            || self.peer.is_some()
        {
            self.out
                .push_back(Output::Close(conn, "unexpected connection"));
            return;
        }
        info!("join-dialed primary={addr} conn={conn}");
        self.peer = Some(Peer {
            conn,
            addr,
            last_heard: now,
        });
        self.out.push_back(Output::Hello(
            conn,
            Hello::Peer {
                node: self.cfg.node,
                listen: self.cfg.listen,
                view: self.view.number,
            },
        ));
        self.arm_peer_timers(now);
    }

    pub fn handle_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        if self.role == Role::Joining && addr == self.view.primary {
            warn!(
                "join-failed primary={addr} retry_in_ms={}",
                self.cfg.heartbeat.as_millis()
            );
            self.retry_join(now);
        }
    }

    /// Tries to join again in a heartbeat, unless it is time to give up.
    fn retry_join(&mut self, now: Instant) {
        if self.join_give_up.is_some_and(|t| now >= t) {
            // Left behind (its primary died, or a script stopped the primary and not us),
            // a joiner would retry for ever.
            self.step_down(&format!(
                "no primary to join at {} within {} ms",
                self.view.primary,
                (self.cfg.join_deadline() + self.cfg.peer_timeout()).as_millis()
            ));
            return;
        }
        self.timers.join = Some(now + self.cfg.heartbeat);
    }

    /// A connection closed (by either side, or by the reactor after a bad frame).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.catching_up.remove(&conn);
        self.resend_after_install.remove(&conn);
        if let Some(client) = self.client_conns.remove(&conn) {
            if let ClientConn::Known(idx) = client {
                let record = &mut self.clients[idx as usize];
                if record.conn == Some(conn) {
                    record.conn = None;
                    // The client voids our lease when this connection closes: so do we.
                    record.lease_from = None;
                    info!("client-gone client={} conn={conn}", record.id);
                    self.lease_cache.set(LeaseCache::default());
                }
            }
            return;
        }
        if self.peer.as_ref().is_some_and(|p| p.conn == conn) {
            self.peer_lost(PeerLoss::Closed, now);
        }
    }

    /// The backup this server spawned has exited (SIGCHLD).
    pub fn handle_child_exit(&mut self, now: Instant) {
        // With a peer linked, the exited child may not be that peer (a backup started by
        // hand can be in service); if it is, its connection's close tells us too.
        if self.exited || self.role != Role::Primary || self.peer.is_some() {
            return;
        }
        self.peer_lost(PeerLoss::ChildExited, now);
    }

    pub fn handle_client_msg(&mut self, conn: ConnId, msg: ClientMsg, now: Instant) {
        if self.exited {
            return;
        }
        if let ClientMsg::Stale { accepted } = &msg {
            // Only from a client that said hello here: a refused connection is nobody.
            if self.client_conns.contains_key(&conn) {
                self.learn_view(*accepted, "client-says-stale");
            }
            return;
        }
        let Some(idx) = self.resolve_client(conn) else {
            debug!("client-msg-dropped reason=unregistered conn={conn}");
            return;
        };
        match msg {
            ClientMsg::Votes { view: _, votes } => {
                self.count_votes(votes.into_iter().map(|(seq, yes)| (idx, seq, yes)), now);
            }
            ClientMsg::Resend { view, from } => {
                if self.role == Role::Primary && view > self.view.number {
                    // The client already follows the view we are installing (the backup
                    // told it first): results tagged with our older view would be dropped
                    // as stale. Answer once we act in its view.
                    self.resend_after_install.insert(conn, from);
                } else if self.role == Role::Primary {
                    self.send_results_from(conn, from);
                }
            }
            ClientMsg::Accept {
                view,
                last_seq,
                votes,
                tail,
            } => self.on_accept(idx, view, last_seq, votes, tail, now),
            ClientMsg::Reject {
                proposed,
                accepted,
                promised,
                retry_after_ms,
            } => self.on_reject(proposed, accepted, promised, retry_after_ms, now),
            ClientMsg::LeaseAck { view: _, round } => self.on_lease_ack(idx, round, now),
            ClientMsg::Stale { .. } => {}
        }
    }

    pub fn handle_peer_msg(&mut self, conn: ConnId, msg: PeerMsg, now: Instant) {
        if self.exited {
            return;
        }
        if let PeerMsg::Fence { view } = msg {
            // Only on our own peer link: any connection could claim anything.
            if self.peer.as_ref().is_none_or(|p| p.conn != conn) {
                self.out
                    .push_back(Output::Close(conn, "fence off the peer link"));
                return;
            }
            if self.role == Role::Joining {
                // The primary we came to join was replaced; its successor spawns its own.
                self.step_down(&format!("fenced while joining: view {view} is newer"));
            } else {
                self.learn_view(view, "fenced-by-peer");
            }
            return;
        }
        if let PeerMsg::JoinRefused { view, reason } = &msg {
            warn!(
                "join-refused by={} view={view} reason={reason}",
                self.view.primary
            );
            // A live primary that wants us later (it waits for clients, or recovers): keep
            // trying. One that has a backup already does not need us.
            if self.role == Role::Joining && reason != REFUSED_HAS_BACKUP {
                self.join_give_up = Some(now + self.cfg.join_deadline() + self.cfg.peer_timeout());
            }
            return;
        }
        let Some(peer) = self.peer.as_mut().filter(|p| p.conn == conn) else {
            self.out
                .push_back(Output::Close(conn, "peer message from a stale connection"));
            return;
        };
        peer.last_heard = now;
        self.timers.peer_dead = Some(now + self.cfg.peer_timeout());
        // Only a primary sends these; a primary hearing them from its peer is talking to a
        // server that still believes itself primary of an older view.
        if self.role == Role::Primary && msg.is_from_a_primary() {
            warn!(
                "fence peer={} their_view={} our_view={}",
                self.peer
                    .as_ref()
                    .map_or(String::new(), |p| p.addr.to_string()),
                msg.view(),
                self.view.number
            );
            self.out
                .push_back(Output::ToPeer(conn, PeerMsg::Fence { view: self.view }));
            self.out.push_back(Output::Close(conn, "fenced"));
            self.peer = None;
            self.pending_forward.clear();
            self.timers.peer_dead = None;
            return;
        }
        match msg {
            PeerMsg::Heartbeat { .. } => {}
            PeerMsg::Snapshot(snapshot) => self.install_snapshot(*snapshot, now),
            PeerMsg::Install { view } => {
                if self.role == Role::Joining || self.role == Role::Backup {
                    info!("view-change role=backup view={view}");
                    self.view = view;
                    self.highest_seen = self.highest_seen.max(view.number);
                    self.role = Role::Backup;
                    self.join_give_up = None;
                    self.out.push_back(Output::ToPeer(
                        conn,
                        PeerMsg::InstallAck { view: view.number },
                    ));
                }
            }
            PeerMsg::InstallAck { view } => match self.pending_install {
                Some(pending) if pending.number == view && self.role == Role::Primary => {
                    self.pending_install = None;
                    let accepted = self.clients.len() / 2 + 1;
                    self.install(pending, accepted, now);
                }
                _ => debug!("install-ack-ignored view={view}"),
            },
            PeerMsg::Register { view: _, client } => {
                self.register(client);
            }
            PeerMsg::Open {
                view: _,
                seq,
                voters,
            } => {
                if seq != self.next_seq() || voters as usize > MAX_CLIENTS {
                    warn!(
                        "replication-gap expected={} got={seq} voters={voters}",
                        self.next_seq()
                    );
                    return;
                }
                self.ballots.push_back(Ballot::new(seq, voters, now));
            }
            PeerMsg::Forward { view: _, votes } => {
                self.count_votes(
                    votes
                        .into_iter()
                        .map(|(seq, client, yes)| (client, seq, yes)),
                    now,
                );
            }
            PeerMsg::Commit { view, seq, tally } => self.apply_commit(conn, view, seq, tally),
            PeerMsg::CommitAck { view: _, seq } => self.commit_acked(seq, now),
            PeerMsg::JoinRefused { .. } | PeerMsg::Fence { .. } => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.timers.join) {
            self.timers.join = None;
            info!("join-start primary={}", self.view.primary);
            self.out.push_back(Output::Dial(self.view.primary));
        }
        if due(self.timers.heartbeat) {
            self.timers.heartbeat = Some(now + self.cfg.heartbeat);
            self.send_heartbeats(now);
        }
        if due(self.timers.peer_dead) {
            self.timers.peer_dead = None;
            if self.peer.is_some() {
                self.peer_lost(PeerLoss::Silent, now);
            }
        }
        if due(self.timers.propose) {
            self.timers.propose = None;
            self.send_proposal(now);
        }
        if due(self.timers.respawn) {
            self.timers.respawn = None;
            self.spawn_backup("respawn", now);
        }
        if due(self.timers.join_deadline) {
            self.timers.join_deadline = None;
            warn!(
                "backup-join-overdue waited_ms={}",
                self.cfg.join_deadline().as_millis()
            );
            self.spawn_backup("join-overdue", now);
        }
        if due(self.timers.reask) {
            self.timers.reask = None;
            self.reask_missing_voters(now);
        }
        if due(self.timers.open_ballot) {
            self.timers.open_ballot = None;
            self.open_ballots(now);
        }
    }

    // ----- liveness of the peer --------------------------------------------------------

    fn arm_peer_timers(&mut self, now: Instant) {
        self.timers.heartbeat = Some(now);
        self.timers.peer_dead = Some(now + self.cfg.peer_timeout());
    }

    /// Heartbeat to the peer; lease renewal to every client (primary only).
    fn send_heartbeats(&mut self, now: Instant) {
        self.flush_forwards();
        if let Some(peer) = &self.peer {
            self.out.push_back(Output::ToPeer(
                peer.conn,
                PeerMsg::Heartbeat {
                    view: self.view.number,
                },
            ));
        }
        if self.role == Role::Primary && !self.recovering {
            let round = self.lease_round(now);
            let lease = ServerMsg::Lease {
                view: self.view.number,
                round,
            };
            self.send_to_clients(self.clients.len(), &lease);
        }
    }

    /// A new lease renewal round, sent now.
    fn lease_round(&mut self, now: Instant) -> u64 {
        let round = self.next_lease_round;
        self.next_lease_round += 1;
        // Rounds older than a lease time cannot extend any lease; keep a few beyond that.
        let keep = self.cfg.miss_limit as usize + 4;
        while self.lease_rounds.len() >= keep {
            self.lease_rounds.pop_front();
        }
        self.lease_rounds.push_back((round, now));
        round
    }

    fn on_lease_ack(&mut self, idx: u32, round: u64, now: Instant) {
        let Some(&(_, sent)) = self.lease_rounds.iter().find(|(r, _)| *r == round) else {
            return;
        };
        let had = self.holds_lease(now);
        self.extend_lease(idx, sent);
        if !had && self.holds_lease(now) {
            // Back in charge: whatever waited for the lease may go on.
            self.commit_ready(now);
            self.arm_open_ballot(now);
        }
    }

    /// Client `idx` acknowledged a lease renewal (or accepted our proposal) sent at `sent`.
    fn extend_lease(&mut self, idx: u32, sent: Instant) {
        if let Some(record) = self.clients.get_mut(idx as usize) {
            record.lease_from = Some(record.lease_from.map_or(sent, |t| t.max(sent)));
            let mut cache = self.lease_cache.get();
            cache.fresh = false;
            self.lease_cache.set(cache);
        }
    }

    /// A majority of the clients hold our lease: no one else can become primary before it
    /// runs out, so we may open ballots and tell results.
    pub fn holds_lease(&self, now: Instant) -> bool {
        let cache = self.lease_cache.get();
        let held = if cache.held_until.is_some_and(|t| now < t) {
            true
        } else if cache.fresh {
            false
        } else {
            let held_until = self.majority_lease_end();
            self.lease_cache.set(LeaseCache {
                held_until,
                fresh: true,
            });
            held_until.is_some_and(|t| now < t)
        };
        debug_assert_eq!(held, self.majority_lease_end().is_some_and(|t| now < t));
        held
    }

    /// When the lease of a majority of the clients ends: the majority-th latest lease end.
    fn majority_lease_end(&self) -> Option<Instant> {
        let lease = self.cfg.peer_timeout();
        let mut ends: Vec<Instant> = self
            .clients
            .iter()
            .filter_map(|c| c.lease_from.map(|t| t + lease))
            .collect();
        let k = self.majority();
        if ends.len() < k {
            return None;
        }
        // The k-th latest end: k leases (a majority) run until then.
        let (_, kth, _) = ends.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        Some(*kth)
    }

    fn peer_lost(&mut self, why: PeerLoss, now: Instant) {
        let peer = self.peer.take();
        self.pending_forward.clear();
        self.timers.peer_dead = None;
        if let Some(p) = &peer {
            warn!(
                "peer-dead role={} peer={} reason={} silent_ms={} view={}",
                self.role,
                p.addr,
                why.as_str(),
                now.saturating_duration_since(p.last_heard).as_millis(),
                self.view.number
            );
            self.out.push_back(Output::Close(p.conn, "peer dead"));
        } else {
            warn!(
                "peer-dead role={} reason={} view={}",
                self.role,
                why.as_str(),
                self.view.number
            );
        }
        match self.role {
            Role::Primary => self.backup_lost(why, now),
            Role::Backup => self.take_over(now),
            Role::Joining => {
                // No state to take over with: try to join again.
                self.retry_join(now);
            }
        }
    }

    /// The primary lost its backup: go on alone in a primary-only view, and replace it.
    ///
    /// The replacement is spawned (which kills the old process if it still runs) only from
    /// a view that a majority installed without that backup. Until then this primary may
    /// itself be the stale one, and the "dead" backup its successor.
    fn backup_lost(&mut self, why: PeerLoss, now: Instant) {
        if let Some(view) = self.pending_install.take() {
            // The joiner may have acted on its Install (and told clients of the view in
            // its Welcome): the view is real, so install it and lose its backup like any
            // other. Proposals then build on it.
            let accepted = self.majority();
            self.install(view, accepted, now);
        }
        // The configuration we are heading for: the pending proposal's, else the installed.
        let target_backup = match &self.proposal {
            Some(p) => p.view.backup,
            None => self.view.backup,
        };
        if target_backup.is_some() {
            self.propose(None, now);
        }
        if self.view.backup.is_none() {
            self.spawn_backup(why.as_str(), now);
        }
    }

    /// Spawns (or, if it is too soon after the last spawn, schedules) a replacement backup.
    fn spawn_backup(&mut self, reason: &str, now: Instant) {
        // A backup already connected (joined, or joining) is the replacement: a pending
        // respawn must not kill it.
        if self.role != Role::Primary || self.peer.is_some() {
            self.timers.respawn = None;
            return;
        }
        let earliest = self.last_spawn.map_or(now, |t| t + self.cfg.heartbeat);
        if earliest > now {
            self.timers.respawn = Some(earliest);
            return;
        }
        info!("spawn-backup reason={reason}");
        self.last_spawn = Some(now);
        self.timers.respawn = None;
        self.timers.join_deadline = Some(now + self.cfg.join_deadline());
        self.out.push_back(Output::SpawnBackup);
    }

    // ----- views -----------------------------------------------------------------------

    /// Proposes a view in which this server is primary with `backup`; it is installed
    /// once a majority of the registered clients accepted it.
    fn propose(&mut self, backup: Option<SocketAddr>, now: Instant) {
        self.new_proposal(backup);
        self.send_proposal(now);
    }

    fn new_proposal(&mut self, backup: Option<SocketAddr>) {
        // Saturating: `highest_seen` comes from the network.
        let number = View(
            self.highest_seen
                .0
                .max(self.view.number.0)
                .saturating_add(1),
        );
        self.highest_seen = number;
        let view = ViewInfo {
            number,
            primary: self.cfg.listen,
            backup,
        };
        info!("view-propose view={view} clients={}", self.clients.len());
        self.proposal = Some(Proposal {
            view,
            accepted: vec![false; self.clients.len()],
            sent: None,
        });
    }

    fn proposal_msg(&self) -> Option<ServerMsg> {
        self.proposal.as_ref().map(|p| ServerMsg::Propose {
            view: p.view,
            base: self.view.number,
            recovering: self.recovering,
            node: self.cfg.node,
        })
    }

    fn majority(&self) -> usize {
        self.clients.len() / 2 + 1
    }

    fn send_proposal(&mut self, now: Instant) {
        let Some(p) = &mut self.proposal else {
            return;
        };
        p.accepted.resize(self.clients.len(), false);
        if self.clients.is_empty() {
            // No client can have seen anything: nothing to witness.
            self.install_proposal(now);
            return;
        }
        let Some(msg) = self.proposal_msg() else {
            return;
        };
        let Some(p) = &mut self.proposal else {
            return;
        };
        p.sent.get_or_insert(now);
        let conns: Vec<ConnId> = self
            .clients
            .iter()
            .zip(&p.accepted)
            .filter_map(|(record, accepted)| record.conn.filter(|_| !accepted))
            .collect();
        if !conns.is_empty() {
            self.out.push_back(Output::ToClients(conns, msg));
        }
        self.timers.propose = Some(now + self.cfg.heartbeat);
    }

    fn on_accept(
        &mut self,
        idx: u32,
        view: View,
        last_seq: Seq,
        votes: Vec<(Seq, bool)>,
        tail: Vec<Tally>,
        now: Instant,
    ) {
        // Results the client lacks: it asks (`Resend`) when it adopts the view we install,
        // or says `last_seq` in its hello when it connects later.
        self.count_votes(votes.into_iter().map(|(seq, yes)| (idx, seq, yes)), now);
        let Some(p) = &mut self.proposal else {
            return;
        };
        if p.view.number != view {
            return;
        }
        p.accepted.resize(self.clients.len(), false);
        if let Some(slot) = p.accepted.get_mut(idx as usize) {
            *slot = true;
        }
        let (sent, count) = (p.sent, p.count());
        // Accepting, the client made us its lease holder (from when it heard us).
        if let Some(sent) = sent {
            self.extend_lease(idx, sent);
        }
        if self.recovering {
            self.recover_tail(last_seq, tail);
            // Every client must have answered: a result that reached only one of them
            // must not be run again with a different electorate.
            let all = self.clients.len();
            debug!("view-accept client={idx} view={view} accepted={count}/{all} recovering=true");
            if count == all && all >= self.cfg.min_clients {
                self.install_proposal(now);
            }
            return;
        }
        let majority = self.majority();
        debug!("view-accept client={idx} view={view} accepted={count}/{majority}");
        if count >= majority {
            self.install_proposal(now);
        }
    }

    /// Keeps the longest log tail a client reported; the clients' logs must agree.
    fn recover_tail(&mut self, last_seq: Seq, tail: Vec<Tally>) {
        let tail_first = last_seq.0 + 1 - tail.len().min(last_seq.0 as usize) as u64;
        if let Some((best_last, best)) = &self.recovered {
            let best_first = best_last.0 + 1 - best.len() as u64;
            for (i, tally) in tail.iter().enumerate() {
                let seq = tail_first + i as u64;
                let held = (best_first..=best_last.0).contains(&seq);
                if held && best[(seq - best_first) as usize] != *tally {
                    warn!("recovery-conflict seq={seq} logs disagree");
                }
            }
            if last_seq <= *best_last {
                return;
            }
        }
        if last_seq.0 >= tail.len() as u64 {
            self.recovered = Some((last_seq, tail));
        }
    }

    fn on_reject(
        &mut self,
        proposed: View,
        accepted: ViewInfo,
        promised: View,
        retry_after_ms: Option<u64>,
        now: Instant,
    ) {
        self.highest_seen = self.highest_seen.max(accepted.number).max(promised);
        if self.learn_view(accepted, "client-rejected") {
            return;
        }
        let Some(p) = &self.proposal else {
            return;
        };
        if p.view.number != proposed {
            return;
        }
        self.highest_seen = self.highest_seen.max(promised);
        match retry_after_ms {
            // The current primary's lease still holds at that client.
            Some(ms) => {
                let at = now + Duration::from_millis(ms);
                let retry = self.timers.propose.map_or(at, |t| t.min(at));
                self.timers.propose = Some(retry);
            }
            // It promised a competing proposal of the same or a higher number: go above.
            // The installed primary does so at once; a challenger yields for a lease, so
            // two proposers cannot outbid each other forever.
            None if promised >= proposed => {
                let backup = p.view.backup;
                if self.role == Role::Primary {
                    self.propose(backup, now);
                } else {
                    // Two leases: the incumbent's retries (after one) come first.
                    let at = now + self.cfg.peer_timeout() * 2;
                    self.new_proposal(backup);
                    self.timers.propose = Some(at);
                }
            }
            None => {}
        }
    }

    /// Someone has installed `installed`. If it is newer than ours and we are not its
    /// primary, we were replaced: step down. Returns whether we did.
    fn learn_view(&mut self, installed: ViewInfo, how: &str) -> bool {
        self.highest_seen = self.highest_seen.max(installed.number);
        if self.recovering {
            // Of course the clients know newer views: that is what we are rebuilding.
            return false;
        }
        let replaced = installed.number > self.view.number
            && installed.primary != self.cfg.listen
            && !(self.role == Role::Backup && installed.backup == Some(self.cfg.listen));
        if replaced && self.role != Role::Joining {
            self.step_down(&format!(
                "{how}: view {installed} replaced our view {}",
                self.view
            ));
            return true;
        }
        false
    }

    fn step_down(&mut self, reason: &str) {
        warn!(
            "stepped-down role={} view={} reason={reason}",
            self.role, self.view.number
        );
        self.exited = true;
        self.timers = Timers::default();
        self.out.push_back(Output::Exit(reason.to_string()));
    }

    /// A majority accepted: act in the proposed view.
    fn install_proposal(&mut self, now: Instant) {
        let Some(p) = self.proposal.take() else {
            return;
        };
        self.timers.propose = None;
        let view = p.view;
        // A view adding a joiner: the joiner first, the clients after its ack.
        if let (Some(backup), Some(peer), Role::Primary) = (view.backup, &self.peer, self.role) {
            if peer.addr == backup {
                info!(
                    "view-accepted view={view} accepted={}/{} waiting=install-ack",
                    p.count(),
                    self.clients.len()
                );
                self.out
                    .push_back(Output::ToPeer(peer.conn, PeerMsg::Install { view }));
                self.pending_install = Some(view);
                // From now on what we tell clients must be known to the joiner too.
                self.recommit();
                self.commit_ready(now);
                return;
            }
        }
        self.install(view, p.count(), now);
    }

    /// Acts in `view` from now on and tells every client.
    fn install(&mut self, view: ViewInfo, accepted: usize, now: Instant) {
        let took_over = self.role != Role::Primary;
        info!(
            "view-change role=primary view={view} accepted={accepted}/{} took_over={took_over}",
            self.clients.len()
        );
        self.role = Role::Primary;
        self.view = view;
        if self.recovering {
            self.recovering = false;
            if let Some((last, tail)) = self.recovered.take() {
                self.results_first = last.0 + 1 - tail.len() as u64;
                self.results = tail;
            }
            warn!(
                "cold-restart-recovered committed={} first_held={} view={view}",
                self.committed(),
                self.results_first
            );
        }
        // Clients that said hello while we were backup and that the old primary never
        // registered: they are ours to register now.
        let unregistered: Vec<ClientId> = self
            .client_conns
            .values()
            .filter_map(|c| match c {
                ClientConn::Unregistered(id) => Some(id.clone()),
                ClientConn::Known(_) => None,
            })
            .collect();
        for id in unregistered {
            info!("client-registered client={id} at=takeover");
            self.register(id);
        }
        self.send_to_clients(self.clients.len(), &ServerMsg::NewView { view });
        for (conn, from) in std::mem::take(&mut self.resend_after_install) {
            if self.client_conns.contains_key(&conn) {
                // A catch-up under way went out tagged with the old view: start over.
                self.catching_up.remove(&conn);
                self.send_results_from(conn, from);
            }
        }
        self.recommit();
        self.timers.heartbeat = Some(now);
        if took_over {
            // Finish the past: ask for every vote still missing.
            self.last_open = None;
            self.reask_missing_voters(now);
        }
        if view.backup.is_none() && self.peer.is_none() {
            self.spawn_backup(
                if took_over {
                    "took-over"
                } else {
                    "backup-lost"
                },
                now,
            );
        }
        self.commit_ready(now);
        self.arm_open_ballot(now);
    }

    /// The backup's primary is dead: propose a view in which we are primary.
    fn take_over(&mut self, now: Instant) {
        info!(
            "takeover-start view={} committed={} open={}",
            self.view.number,
            self.committed(),
            self.ballots.len()
        );
        self.propose(None, now);
    }

    // ----- clients -------------------------------------------------------------------

    fn client_hello(
        &mut self,
        conn: ConnId,
        id: ClientId,
        last_seq: Seq,
        view: View,
        now: Instant,
    ) {
        if id.0.is_empty() || id.0.len() > MAX_CLIENT_ID_LEN {
            self.refuse_client(
                conn,
                format!("client id must be 1..={MAX_CLIENT_ID_LEN} bytes"),
            );
            return;
        }
        self.highest_seen = self.highest_seen.max(view);
        let welcome = ServerMsg::Welcome {
            view: self.view,
            lease_ms: self.cfg.peer_timeout().as_millis() as u64,
        };
        match self.role {
            Role::Joining => {
                self.refuse_client(conn, "this server is still joining".to_string());
            }
            Role::Backup => {
                // Votes sent here are a second copy; the primary owns registration.
                match self.client_index.get(&id) {
                    Some(&idx) => self.attach_client(idx, conn),
                    None => {
                        self.client_conns.insert(conn, ClientConn::Unregistered(id));
                    }
                }
                self.out.push_back(Output::ToClient(conn, welcome));
                if let Some(msg) = self.proposal_msg() {
                    self.out.push_back(Output::ToClient(conn, msg));
                }
            }
            Role::Primary => {
                if !self.recovering && self.is_pristine() && (view > View(0) || last_seq > Seq(0)) {
                    warn!(
                        "cold-restart-detected client={id} last_seq={last_seq} client_view={view}"
                    );
                    self.recovering = true;
                }
                let idx = match self.client_index.get(&id) {
                    Some(&idx) => idx,
                    None if self.clients.len() >= MAX_CLIENTS => {
                        self.refuse_client(conn, format!("at most {MAX_CLIENTS} clients"));
                        return;
                    }
                    None => {
                        let idx = self.register(id.clone());
                        if let Some(peer) = &self.peer {
                            self.out.push_back(Output::ToPeer(
                                peer.conn,
                                PeerMsg::Register {
                                    view: self.view.number,
                                    client: id.clone(),
                                },
                            ));
                        }
                        idx
                    }
                };
                self.attach_client(idx, conn);
                info!(
                    "client-registered client={id} idx={idx} conn={conn} last_seq={last_seq} client_view={view}"
                );
                // A recovering server's own view means nothing to a client with history:
                // it only asks such clients to accept the view it is rebuilding.
                if !(self.recovering && view > View(0)) {
                    self.out.push_back(Output::ToClient(conn, welcome));
                }
                if self.recovering && self.proposal.is_none() {
                    self.propose(None, now);
                } else if let Some(msg) = self.proposal_msg() {
                    self.out.push_back(Output::ToClient(conn, msg));
                }
                if last_seq > self.committed() && !self.recovering {
                    warn!(
                        "client-ahead client={id} last_seq={last_seq} committed={}",
                        self.committed()
                    );
                }
                self.send_results_from(conn, last_seq.next());
                self.ask_missing_votes(idx, conn);
                self.arm_open_ballot(now);
            }
        }
    }

    /// Makes `conn` the connection of client `idx`. One the client had before is closed:
    /// hellos on two connections may arrive in either order (a restarted client's old
    /// one can come last), and closing the loser makes the client redial if it was wrong.
    fn attach_client(&mut self, idx: u32, conn: ConnId) {
        if let Some(old) = self.clients[idx as usize].conn.replace(conn) {
            if old != conn {
                self.client_conns.remove(&old);
                self.out.push_back(Output::Close(old, "client reconnected"));
                // A client voids our lease when a connection to us closes: so do we.
                self.clients[idx as usize].lease_from = None;
                self.lease_cache.set(LeaseCache::default());
            }
        }
        self.client_conns.insert(conn, ClientConn::Known(idx));
    }

    /// Asks client `idx` for every vote of its that an open ballot still lacks: one
    /// `VoteRequest` per run of consecutive ballots.
    fn ask_missing_votes(&mut self, idx: u32, conn: ConnId) {
        let view = self.view.number;
        let mut run: Option<(Seq, u32)> = None;
        for ballot in &self.ballots {
            if !ballot.awaits(idx) {
                continue;
            }
            match &mut run {
                Some((first, count)) if first.0 + u64::from(*count) == ballot.seq.0 => {
                    *count += 1;
                }
                _ => {
                    if let Some((first, count)) = run.replace((ballot.seq, 1)) {
                        self.out.push_back(Output::ToClient(
                            conn,
                            ServerMsg::VoteRequest { view, first, count },
                        ));
                    }
                }
            }
        }
        if let Some((first, count)) = run {
            debug!(
                "vote-ask client={} first={first} count={count}",
                self.clients[idx as usize].id
            );
            self.out.push_back(Output::ToClient(
                conn,
                ServerMsg::VoteRequest { view, first, count },
            ));
        }
    }

    /// The connections of the connected clients among the first `count` registered.
    fn client_conns(&self, count: usize) -> Vec<ConnId> {
        self.clients[..count.min(self.clients.len())]
            .iter()
            .filter_map(|record| record.conn)
            .collect()
    }

    /// Sends `msg` to every connected client among the first `count` registered.
    fn send_to_clients(&mut self, count: usize, msg: &ServerMsg) {
        let conns = self.client_conns(count);
        if !conns.is_empty() {
            self.out.push_back(Output::ToClients(conns, msg.clone()));
        }
    }

    fn refuse_client(&mut self, conn: ConnId, reason: String) {
        warn!("client-refused conn={conn} reason={reason}");
        self.out.push_back(Output::ToClient(
            conn,
            ServerMsg::Refused {
                view: self.view.number,
                reason,
            },
        ));
        self.out.push_back(Output::Close(conn, "client refused"));
    }

    /// Adds a client to the registry (idempotent) and returns its index.
    fn register(&mut self, id: ClientId) -> u32 {
        if let Some(&idx) = self.client_index.get(&id) {
            return idx;
        }
        let idx = self.clients.len() as u32;
        self.client_index.insert(id.clone(), idx);
        let mut conn = None;
        // A backup may already hold a connection from this client.
        for (c, entry) in self.client_conns.iter_mut() {
            if matches!(entry, ClientConn::Unregistered(name) if *name == id) {
                *entry = ClientConn::Known(idx);
                conn = Some(*c);
            }
        }
        self.clients.push(ClientRecord {
            id,
            conn,
            lease_from: None,
        });
        // One more client: the majority may be larger.
        self.lease_cache.set(LeaseCache::default());
        idx
    }

    fn resolve_client(&mut self, conn: ConnId) -> Option<u32> {
        match self.client_conns.get(&conn)? {
            ClientConn::Known(idx) => Some(*idx),
            ClientConn::Unregistered(id) => self.client_index.get(id).copied(),
        }
    }

    /// Starts (or moves on) the catch-up of a client that lacks results from `from` on.
    fn send_results_from(&mut self, conn: ConnId, from: Seq) {
        if self.role != Role::Primary || self.recovering {
            return;
        }
        let from = Seq(from.0.max(1));
        match self.catching_up.get(&conn) {
            // Already under way and past `from`: those results are on their way (a client
            // asks again on every gap it sees meanwhile).
            Some(&next) if next >= from => return,
            _ => {}
        }
        if from.0 < self.results_first && from <= self.committed() {
            warn!(
                "results-unavailable conn={conn} from={from} first_held={}",
                self.results_first
            );
        }
        self.catching_up.insert(conn, from);
        self.continue_catch_up(conn);
    }

    /// Everything queued for `conn` is written (after [`Output::WhenDrained`]).
    pub fn handle_drained(&mut self, conn: ConnId) {
        if self.exited {
            return;
        }
        self.continue_catch_up(conn);
    }

    /// Sends the next burst of a catch-up: at most `CATCHUP_BURST` frames, then waits for
    /// the connection to drain. All at once, a client far behind overflowed its output
    /// buffer (4 MiB, ~400,000 results), was cut, reconnected and started over.
    fn continue_catch_up(&mut self, conn: ConnId) {
        let Some(&next) = self.catching_up.get(&conn) else {
            return;
        };
        if self.role != Role::Primary {
            self.catching_up.remove(&conn);
            return;
        }
        let mut start = next.0.max(self.results_first) - self.results_first;
        let held = self.results.len() as u64;
        for _ in 0..CATCHUP_BURST {
            if start >= held {
                break;
            }
            let end = (start + MAX_RESULTS_PER_FRAME as u64).min(held);
            self.out.push_back(Output::ToClient(
                conn,
                ServerMsg::Results {
                    view: self.view.number,
                    first: Seq(self.results_first + start),
                    tallies: self.results[start as usize..end as usize].to_vec(),
                },
            ));
            start = end;
        }
        if start < held {
            self.catching_up
                .insert(conn, Seq(self.results_first + start));
            self.out.push_back(Output::WhenDrained(conn));
        } else {
            self.catching_up.remove(&conn);
        }
    }

    /// Appends a final result; the oldest ones beyond `MAX_RESULTS_HELD` are let go, so the
    /// history (and a joiner's snapshot) stays bounded however long the cluster runs.
    fn record_result(&mut self, tally: Tally) {
        self.results.push(tally);
        // Trimmed in steps, not one at a time: each trim moves the whole history.
        if self.results.len() > MAX_RESULTS_HELD + MAX_RESULTS_HELD / 8 {
            let drop = self.results.len() - MAX_RESULTS_HELD;
            self.results.drain(..drop);
            self.results_first += drop as u64;
        }
    }

    // ----- ballots -------------------------------------------------------------------

    fn can_open(&self, now: Instant) -> bool {
        self.holds_lease(now)
            && self.role == Role::Primary
            && !self.recovering
            && self.clients.len() >= self.cfg.min_clients.max(1)
            && (self.ballots.len() as u64) < self.cfg.window.clamp(1, MAX_OPEN_BALLOTS)
            && self.cfg.ballots.is_none_or(|n| self.next_seq().0 <= n)
    }

    /// Ballots open in groups: once half the window is free, the primary fills all of it.
    /// The ballots of one group then ride together in one frame per client, their votes
    /// come back in one frame, and they complete in the same turn, so the group stays
    /// together. Refilling one slot per result instead keeps the ballots staggered, and
    /// every socket carries one ballot per write (measured: ~1 ballot per loop turn).
    fn may_refill(&self, now: Instant) -> bool {
        let window = self.cfg.window.clamp(1, MAX_OPEN_BALLOTS);
        let free = window.saturating_sub(self.ballots.len() as u64);
        self.can_open(now) && free >= window.div_ceil(2)
    }

    fn open_ballots(&mut self, now: Instant) {
        if self.may_refill(now) {
            let first = self.next_seq();
            while self.can_open(now)
                && self
                    .last_open
                    .is_none_or(|t| t + self.cfg.ballot_interval <= now)
            {
                self.open_one_ballot(now);
            }
            let count = self.next_seq().0.saturating_sub(first.0) as u32;
            if count > 0 {
                let request = ServerMsg::VoteRequest {
                    view: self.view.number,
                    first,
                    count,
                };
                self.send_to_clients(self.clients.len(), &request);
            }
        }
        self.arm_open_ballot(now);
    }

    /// Opens the next ballot; the caller asks the clients for the votes of all it opened.
    fn open_one_ballot(&mut self, now: Instant) {
        let seq = self.next_seq();
        let voters = self.clients.len() as u32;
        info!(
            "ballot-open seq={seq} voters={voters} view={}",
            self.view.number
        );
        if let Some(peer) = &self.peer {
            self.out.push_back(Output::ToPeer(
                peer.conn,
                PeerMsg::Open {
                    view: self.view.number,
                    seq,
                    voters,
                },
            ));
        }
        self.ballots.push_back(Ballot::new(seq, voters, now));
        self.timers
            .reask
            .get_or_insert(now + self.cfg.vote_timeout());
        self.last_open = Some(now);
    }

    /// Arms the ballot timer for the earliest moment the next ballot may open, if one may.
    fn arm_open_ballot(&mut self, now: Instant) {
        self.timers.open_ballot = self.may_refill(now).then(|| {
            self.last_open
                .map_or(now, |t| (t + self.cfg.ballot_interval).max(now))
        });
    }

    /// Counts `(client, seq, yes)` votes (one message's worth), then lets whatever they
    /// completed commit: once per message, not per vote, as each pass walks the ballots
    /// already committing.
    fn count_votes(&mut self, votes: impl IntoIterator<Item = (u32, Seq, bool)>, now: Instant) {
        let mut counted = false;
        for (client, seq, yes) in votes {
            counted |= self.count_vote(client, seq, yes);
        }
        if counted && self.role == Role::Primary {
            self.commit_ready(now);
        }
    }

    /// Records one vote; true if it was newly counted.
    fn count_vote(&mut self, client: u32, seq: Seq, yes: bool) -> bool {
        let Some(ballot) = self.ballot_mut(seq) else {
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
        if self.role == Role::Primary && self.peer.is_some() {
            self.pending_forward.push((seq, client, yes));
            if self.pending_forward.len() >= MAX_FORWARD_BATCH {
                self.flush_forwards();
            }
        }
        true
    }

    /// Sends the votes counted since the last `Forward`. They wait for the next `Commit` or
    /// heartbeat (or a full batch) instead of leaving every loop turn: the backup gets the
    /// same votes straight from the clients and, on a takeover, from their `Accept`s, so
    /// the copy is a second source, never the only one. Sent per turn, it cost the primary
    /// a write and the backup a wake-up per turn (~18 per ballot with 100 clients).
    fn flush_forwards(&mut self) {
        if self.pending_forward.is_empty() {
            return;
        }
        let votes = std::mem::take(&mut self.pending_forward);
        if let Some(peer) = &self.peer {
            self.out.push_back(Output::ToPeer(
                peer.conn,
                PeerMsg::Forward {
                    view: self.view.number,
                    votes,
                },
            ));
        }
    }

    fn ballot_mut(&mut self, seq: Seq) -> Option<&mut Ballot> {
        let first = self.ballots.front()?.seq;
        let offset = seq.0.checked_sub(first.0)?;
        self.ballots.get_mut(offset as usize)
    }

    /// Commits every complete ballot in seq order (up to the first one still collecting
    /// votes), and tells results from the front once the backup (if the view has one)
    /// acknowledged them and we hold a majority's lease. Results leave in seq order, so a
    /// later ballot that completes first waits for the ones before. Several commits are in
    /// flight at once: one round trip to the backup per group of ballots, not per ballot.
    fn commit_ready(&mut self, now: Instant) {
        if self.role != Role::Primary {
            return;
        }
        let needs_ack = self.commit_backup().is_some();
        let view = self.view.number;
        let commits = self
            .ballots
            .iter()
            .take_while(|b| b.state != BallotState::Open || b.complete())
            .any(|b| b.state == BallotState::Open);
        if commits {
            // The votes before the tallies they count in.
            self.flush_forwards();
        }
        for ballot in &mut self.ballots {
            match ballot.state {
                BallotState::Open if ballot.complete() => {
                    // A joining peer gets every commit too: its copy must be whole when it
                    // is installed as backup.
                    if let Some(peer) = &self.peer {
                        self.out.push_back(Output::ToPeer(
                            peer.conn,
                            PeerMsg::Commit {
                                view,
                                seq: ballot.seq,
                                tally: ballot.tally(),
                            },
                        ));
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
        if !tallies.is_empty() {
            self.send_results(first, tallies);
            if self.ballots.is_empty() {
                self.timers.reask = None;
            }
            self.arm_open_ballot(now);
        }
    }

    /// Tells every client the results from `first` on. Results published in one turn ride
    /// in one frame: the backup acks each `Commit` on its own, so a turn that reads 16
    /// `CommitAck`s publishes 16 times, and each publish joins the `Results` still queued
    /// if it continues it, in the same view, to the same connections. It may overtake only
    /// broadcasts that nothing orders against it (`VoteRequest`, `Lease`) and messages to
    /// the peer; never a message to one client (a catch-up it would overtake leaves a gap
    /// the client has already asked about, and it would drop the result).
    fn send_results(&mut self, first: Seq, tallies: Vec<Tally>) {
        let view = self.view.number;
        let conns = self.client_conns(self.clients.len());
        if conns.is_empty() {
            return;
        }
        let mut queued = None;
        for output in self.out.iter_mut().rev() {
            match output {
                Output::ToClients(
                    to,
                    ServerMsg::Results {
                        view: v,
                        first: f,
                        tallies: t,
                    },
                ) => {
                    queued = Some((to, *v, *f, t));
                    break;
                }
                Output::ToClients(_, ServerMsg::VoteRequest { .. } | ServerMsg::Lease { .. })
                | Output::ToPeer(..) => {}
                _ => break,
            }
        }
        if let Some((to, v, f, queued)) = queued {
            if v == view
                && f.0 + queued.len() as u64 == first.0
                && queued.len() + tallies.len() <= MAX_RESULTS_PER_FRAME
                && *to == conns
            {
                queued.extend_from_slice(&tallies);
                return;
            }
        }
        self.out.push_back(Output::ToClients(
            conns,
            ServerMsg::Results {
                view,
                first,
                tallies,
            },
        ));
    }

    /// The backup whose ack a result needs before any client sees it: the installed
    /// view's, or the joiner's while its view waits for `InstallAck`.
    fn commit_backup(&self) -> Option<SocketAddr> {
        self.pending_install
            .and_then(|v| v.backup)
            .or(self.view.backup)
    }

    fn commit_acked(&mut self, seq: Seq, now: Instant) {
        let from_backup = self
            .peer
            .as_ref()
            .is_some_and(|p| Some(p.addr) == self.commit_backup());
        match self.ballot_mut(seq) {
            Some(ballot) if from_backup && ballot.state == BallotState::Committing => {
                ballot.state = BallotState::Acked;
                self.commit_ready(now);
            }
            _ => debug!("commit-ack-ignored seq={seq}"),
        }
    }

    /// The front ballot's result is final and known to the backup: record it as published
    /// (the caller tells every client).
    fn publish_one(&mut self, now: Instant) -> Tally {
        let Some(ballot) = self.ballots.pop_front() else {
            return Tally::default();
        };
        let tally = ballot.tally();
        self.record_result(tally);
        info!(
            "ballot-result seq={} yes={} no={} view={} ms={}",
            ballot.seq,
            tally.yes,
            tally.no,
            self.view.number,
            now.saturating_duration_since(ballot.opened).as_millis()
        );
        tally
    }

    fn reask_missing_voters(&mut self, now: Instant) {
        if self.role != Role::Primary {
            return;
        }
        for idx in 0..self.clients.len() {
            if let Some(conn) = self.clients[idx].conn {
                self.ask_missing_votes(idx as u32, conn);
            }
        }
        if !self.ballots.is_empty() {
            self.timers.reask = Some(now + self.cfg.vote_timeout());
        }
        self.commit_ready(now);
    }

    // ----- replication ---------------------------------------------------------------

    fn peer_hello(
        &mut self,
        conn: ConnId,
        node: NodeId,
        listen: SocketAddr,
        view: View,
        now: Instant,
    ) {
        self.highest_seen = self.highest_seen.max(view);
        let refusal = match self.role {
            Role::Primary if self.peer.is_some() => Some(REFUSED_HAS_BACKUP),
            Role::Primary if self.recovering => Some("recovering from a cold restart"),
            // Every view change needs clients as witnesses; a backup joins once they are here.
            Role::Primary if self.clients.len() < self.cfg.min_clients.max(1) => {
                Some("waiting for clients")
            }
            Role::Primary => None,
            Role::Joining | Role::Backup => Some("not the primary"),
        };
        if let Some(reason) = refusal {
            warn!("join-refused node={node} listen={listen} reason={reason}");
            let msg = if view > View(0) && view < self.view.number {
                PeerMsg::Fence { view: self.view }
            } else {
                PeerMsg::JoinRefused {
                    view: self.view.number,
                    reason: reason.to_string(),
                }
            };
            self.out.push_back(Output::ToPeer(conn, msg));
            self.out.push_back(Output::Close(conn, "join refused"));
            return;
        }
        info!("join-request node={node} listen={listen} their_view={view}");
        self.timers.join_deadline = None;
        // It came up and joined: if it dies, replace it at once (the spacing is for
        // backups that die before they ever join).
        self.last_spawn = None;
        self.peer = Some(Peer {
            conn,
            addr: listen,
            last_heard: now,
        });
        // The snapshot holds every vote counted so far.
        self.pending_forward.clear();
        let snapshot = Snapshot {
            view: self.view,
            clients: self.clients.iter().map(|c| c.id.clone()).collect(),
            results_first: Seq(self.results_first),
            results: self.results.clone(),
            open: self
                .ballots
                .iter()
                .map(|b| OpenBallot {
                    seq: b.seq,
                    voters: b.voters,
                    votes: b.votes.clone(),
                })
                .collect(),
        };
        self.out
            .push_back(Output::ToPeer(conn, PeerMsg::Snapshot(Box::new(snapshot))));
        // The snapshot and everything after it travel on one ordered connection, so the
        // backup is in sync from here on: propose the view that includes it.
        self.arm_peer_timers(now);
        self.propose(Some(listen), now);
        self.recommit();
        self.commit_ready(now);
    }

    /// The backup changed (joined, or a view installed): every complete ballot not yet
    /// told is committed again, so the backup of the current view has acknowledged it.
    fn recommit(&mut self) {
        for ballot in &mut self.ballots {
            if ballot.state != BallotState::Open {
                ballot.state = BallotState::Open;
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        if self.role != Role::Joining {
            warn!("snapshot-ignored role={}", self.role);
            return;
        }
        self.clients.clear();
        self.lease_cache.set(LeaseCache::default());
        self.client_index.clear();
        for id in snapshot.clients {
            self.register(id);
        }
        self.results_first = snapshot.results_first.0.max(1);
        self.results = snapshot.results;
        self.ballots = snapshot
            .open
            .into_iter()
            .map(|b| {
                // An electorate larger than the clients the snapshot lists is corrupt.
                let voters = b.voters.min(self.clients.len() as u32);
                Ballot::restore(b.seq, voters, b.votes, now)
            })
            .collect();
        self.view = snapshot.view;
        self.highest_seen = self.highest_seen.max(self.view.number);
        info!(
            "snapshot-installed view={} clients={} committed={} open={}",
            self.view,
            self.clients.len(),
            self.committed(),
            self.ballots.len()
        );
    }

    fn apply_commit(&mut self, conn: ConnId, view: View, seq: Seq, tally: Tally) {
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
                self.record_result(tally);
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
        self.out
            .push_back(Output::ToPeer(conn, PeerMsg::CommitAck { view, seq }));
    }
}

impl PeerMsg {
    /// The view a peer message speaks for.
    fn view(&self) -> View {
        match self {
            PeerMsg::Snapshot(s) => s.view.number,
            PeerMsg::Install { view } | PeerMsg::Fence { view } => view.number,
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
