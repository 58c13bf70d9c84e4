//! The server replica as a pure state machine (the quinn-proto shape).
//!
//! - getters take `&self`: [`Node::role`], [`Node::view`], [`Node::status`], ...;
//! - `handle_*` feed it an event from the network or the system, each with `now`;
//! - `poll_*` say what the caller must do next: [`Node::poll_output`] (frames to send,
//!   connections to open or close, a backup to spawn) and [`Node::poll_timeout`] (when to
//!   call [`Node::handle_timeout`]).
//!
//! It never touches a socket, a clock or a file. The reactor (`crate::reactor::server`) is
//! its production caller; the simulator (`crate::sim`) is the second one.
//!
//! Every state transition of a server is in this file; every timer is a field of
//! [`Timers`].

mod ballot;

use crate::link::ConnId;
use crate::proto::limits::{
    MAX_CLIENTS, MAX_CLIENT_ID_LEN, MAX_OPEN_BALLOTS, MAX_RESULTS_PER_FRAME,
};
use crate::proto::messages::OpenBallot;
use crate::proto::{
    ClientId, ClientMsg, Hello, NodeId, PeerMsg, PeerStatus, Role, Seq, ServerMsg, Snapshot,
    StatusReply, Tally, View, ViewInfo,
};
use ballot::{Ballot, BallotState, VoteOutcome};
use log::{debug, info, warn};
use std::collections::{HashMap, VecDeque};
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
    /// Silence from the peer longer than this means it is dead.
    pub fn peer_timeout(&self) -> Duration {
        self.heartbeat * self.miss_limit
    }

    /// A ballot that has waited this long for votes re-asks the voters it lacks.
    fn vote_timeout(&self) -> Duration {
        self.peer_timeout()
    }
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Open a connection to `addr`; report back with [`Node::handle_connected`] or
    /// [`Node::handle_dial_failed`].
    Dial(SocketAddr),
    /// Send the first frame on a connection this node dialed.
    Hello(ConnId, Hello),
    ToClient(ConnId, ServerMsg),
    ToPeer(ConnId, PeerMsg),
    /// Answer a status connection; close it once written.
    Status(ConnId, Box<StatusReply>),
    /// Close the connection once what is queued for it is written.
    Close(ConnId, &'static str),
    /// fork/exec a backup on `--backup-listen`.
    SpawnBackup,
}

/// Every deadline of a node. `None`: not armed.
#[derive(Clone, Debug, Default)]
struct Timers {
    /// Send the next heartbeat to the peer.
    heartbeat: Option<Instant>,
    /// The peer is dead if nothing arrives from it by then.
    peer_dead: Option<Instant>,
    /// The earliest moment the primary may open the next ballot.
    open_ballot: Option<Instant>,
    /// A joining backup dials the primary.
    join: Option<Instant>,
    /// Re-ask the missing voters of the open ballots.
    reask: Option<Instant>,
}

impl Timers {
    fn earliest(&self) -> Option<Instant> {
        [
            self.heartbeat,
            self.peer_dead,
            self.open_ballot,
            self.join,
            self.reask,
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
    /// Declared dead by missed heartbeats (and not heard from since).
    silent: bool,
}

#[derive(Clone, Debug)]
struct ClientRecord {
    id: ClientId,
    conn: Option<ConnId>,
}

/// A client connection as a server knows it. A backup may hear from a client before the
/// primary's `Register` for it arrives; until then it knows only the name.
#[derive(Clone, Debug)]
enum ClientConn {
    Known(u32),
    Unregistered(ClientId),
}

pub struct Node {
    cfg: NodeConfig,
    role: Role,
    view: ViewInfo,
    /// Registered clients; the index is the client's number in ballots and on the peer link.
    clients: Vec<ClientRecord>,
    client_index: HashMap<ClientId, u32>,
    client_conns: HashMap<ConnId, ClientConn>,
    peer: Option<Peer>,
    /// Committed results: `results[i]` is ballot `i + 1`.
    results: Vec<Tally>,
    /// Open ballots, in seq order, the first one being `results.len() + 1`.
    ballots: VecDeque<Ballot>,
    /// When the primary opened its latest ballot (spacing by `--ballot-interval-ms`).
    last_open: Option<Instant>,
    timers: Timers,
    out: VecDeque<Output>,
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
            clients: Vec::new(),
            client_index: HashMap::new(),
            client_conns: HashMap::new(),
            peer: None,
            results: Vec::new(),
            ballots: VecDeque::new(),
            last_open: None,
            timers: Timers::default(),
            out: VecDeque::new(),
            cfg,
        };
        match node.role {
            Role::Primary => {
                info!(
                    "started role=primary node={} view={} listen={}",
                    node.cfg.node, node.view, node.cfg.listen
                );
                node.arm_open_ballot(now);
                if node.cfg.spawn_backup {
                    info!("spawn-backup reason=start");
                    node.out.push_back(Output::SpawnBackup);
                }
            }
            Role::Joining | Role::Backup => {
                let join_at = now + node.cfg.backup_start_delay;
                info!(
                    "started role=joining node={} primary={} join_in_ms={}",
                    node.cfg.node,
                    node.view.primary,
                    node.cfg.backup_start_delay.as_millis()
                );
                node.timers.join = Some(join_at);
            }
        }
        node
    }

    // ----- getters -------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn view(&self) -> ViewInfo {
        self.view
    }

    pub fn committed(&self) -> Seq {
        Seq(self.results.len() as u64)
    }

    pub fn next_seq(&self) -> Seq {
        Seq(self.results.len() as u64 + self.ballots.len() as u64 + 1)
    }

    pub fn results(&self) -> &[Tally] {
        &self.results
    }

    pub fn status(&self, now: Instant) -> StatusReply {
        StatusReply {
            node: self.cfg.node,
            role: self.role,
            view: self.view,
            next_seq: self.next_seq(),
            committed: self.committed(),
            open_ballots: self.ballots.len() as u64,
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
                alive: !p.silent,
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
        self.timers.earliest()
    }

    // ----- inputs --------------------------------------------------------------------

    /// The first frame of a connection someone opened to us.
    pub fn handle_hello(&mut self, conn: ConnId, hello: Hello, now: Instant) {
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
        if self.role != Role::Joining || addr != self.view.primary || self.peer.is_some() {
            self.out
                .push_back(Output::Close(conn, "unexpected connection"));
            return;
        }
        info!("join-dialed primary={addr} conn={conn}");
        self.peer = Some(Peer {
            conn,
            addr,
            last_heard: now,
            silent: false,
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
            self.timers.join = Some(now + self.cfg.heartbeat);
        }
    }

    /// A connection closed (by either side, or by the reactor after a bad frame).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        if let Some(client) = self.client_conns.remove(&conn) {
            if let ClientConn::Known(idx) = client {
                let record = &mut self.clients[idx as usize];
                if record.conn == Some(conn) {
                    record.conn = None;
                    info!("client-gone client={} conn={conn}", record.id);
                }
            }
            return;
        }
        if self.peer.as_ref().is_some_and(|p| p.conn == conn) {
            let peer = self.peer.take();
            warn!(
                "peer-lost role={} peer={} view={}",
                self.role,
                peer.map(|p| p.addr.to_string()).unwrap_or_default(),
                self.view.number
            );
            self.timers.heartbeat = None;
            self.timers.peer_dead = None;
            if self.role == Role::Joining {
                self.timers.join = Some(now + self.cfg.heartbeat);
            }
        }
    }

    pub fn handle_client_msg(&mut self, conn: ConnId, msg: ClientMsg, now: Instant) {
        let Some(idx) = self.resolve_client(conn) else {
            debug!("vote-dropped reason=unregistered conn={conn}");
            return;
        };
        match msg {
            ClientMsg::Vote { view, seq, yes } => {
                if view > self.view.number {
                    debug!("vote-from-newer-view client={idx} view={view}");
                }
                self.count_vote(idx, seq, yes, now);
            }
            ClientMsg::Resend { view: _, from } => {
                if self.role == Role::Primary {
                    self.send_results_from(conn, from);
                }
            }
        }
    }

    pub fn handle_peer_msg(&mut self, conn: ConnId, msg: PeerMsg, now: Instant) {
        let Some(peer) = self.peer.as_mut().filter(|p| p.conn == conn) else {
            self.out
                .push_back(Output::Close(conn, "peer message from a stale connection"));
            return;
        };
        if peer.silent {
            info!("peer-back peer={}", peer.addr);
        }
        peer.last_heard = now;
        peer.silent = false;
        self.timers.peer_dead = Some(now + self.cfg.peer_timeout());
        match msg {
            PeerMsg::Heartbeat { view } => {
                if view != self.view.number && self.role != Role::Joining {
                    debug!(
                        "heartbeat-view-mismatch ours={} theirs={view}",
                        self.view.number
                    );
                }
            }
            PeerMsg::Snapshot(snapshot) => self.install_snapshot(*snapshot, now),
            PeerMsg::Install { view } => {
                info!("view-change role=backup view={view}");
                self.view = view;
            }
            PeerMsg::Register { view: _, client } => {
                self.register(client);
            }
            PeerMsg::Open {
                view: _,
                seq,
                voters,
            } => {
                if seq != self.next_seq() {
                    warn!("replication-gap expected={} got={seq}", self.next_seq());
                    return;
                }
                self.ballots.push_back(Ballot::new(seq, voters, now));
            }
            PeerMsg::Forward {
                view: _,
                seq,
                client,
                yes,
            } => {
                self.count_vote(client, seq, yes, now);
            }
            PeerMsg::Commit { view, seq, tally } => self.apply_commit(conn, view, seq, tally),
            PeerMsg::CommitAck { view: _, seq } => self.commit_acked(seq, now),
            PeerMsg::JoinRefused { view, reason } => {
                warn!(
                    "join-refused by={} view={view} reason={reason}",
                    self.view.primary
                );
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.join.is_some_and(|t| t <= now) {
            self.timers.join = None;
            info!("join-start primary={}", self.view.primary);
            self.out.push_back(Output::Dial(self.view.primary));
        }
        if self.timers.heartbeat.is_some_and(|t| t <= now) {
            self.timers.heartbeat = Some(now + self.cfg.heartbeat);
            if let Some(peer) = &self.peer {
                self.out.push_back(Output::ToPeer(
                    peer.conn,
                    PeerMsg::Heartbeat {
                        view: self.view.number,
                    },
                ));
            }
        }
        if self.timers.peer_dead.is_some_and(|t| t <= now) {
            self.timers.peer_dead = None;
            if let Some(peer) = &mut self.peer {
                peer.silent = true;
                warn!(
                    "peer-dead role={} peer={} silent_ms={} miss_limit={}",
                    self.role,
                    peer.addr,
                    now.saturating_duration_since(peer.last_heard).as_millis(),
                    self.cfg.miss_limit
                );
            }
        }
        if self.timers.reask.is_some_and(|t| t <= now) {
            self.timers.reask = None;
            self.reask_missing_voters(now);
        }
        if self.timers.open_ballot.is_some_and(|t| t <= now) {
            self.timers.open_ballot = None;
            self.open_ballots(now);
        }
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
        match self.role {
            Role::Joining => {
                self.refuse_client(conn, "this server is still joining".to_string());
            }
            Role::Backup => {
                // Votes sent here are a second copy; the primary owns registration.
                let entry = match self.client_index.get(&id) {
                    Some(&idx) => {
                        self.clients[idx as usize].conn = Some(conn);
                        ClientConn::Known(idx)
                    }
                    None => ClientConn::Unregistered(id),
                };
                self.client_conns.insert(conn, entry);
                self.out.push_back(Output::ToClient(
                    conn,
                    ServerMsg::Welcome { view: self.view },
                ));
            }
            Role::Primary => {
                let idx = match self.client_index.get(&id) {
                    Some(&idx) => idx,
                    None if self.clients.len() >= MAX_CLIENTS => {
                        self.refuse_client(conn, format!("at most {MAX_CLIENTS} clients"));
                        return;
                    }
                    None => {
                        let idx = self.register(id.clone());
                        if let (Some(peer), Some(_)) = (&self.peer, self.view.backup) {
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
                if let Some(old) = self.clients[idx as usize].conn.replace(conn) {
                    // A reconnect whose old connection we have not seen close yet.
                    self.client_conns.remove(&old);
                    self.out.push_back(Output::Close(old, "client reconnected"));
                }
                self.client_conns.insert(conn, ClientConn::Known(idx));
                info!(
                    "client-registered client={id} idx={idx} conn={conn} last_seq={last_seq} client_view={view}"
                );
                self.out.push_back(Output::ToClient(
                    conn,
                    ServerMsg::Welcome { view: self.view },
                ));
                if last_seq > self.committed() {
                    warn!(
                        "client-ahead client={id} last_seq={last_seq} committed={}",
                        self.committed()
                    );
                }
                self.send_results_from(conn, last_seq.next());
                for ballot in &self.ballots {
                    if ballot.awaits(idx) {
                        self.out.push_back(Output::ToClient(
                            conn,
                            ServerMsg::VoteRequest {
                                view: self.view.number,
                                seq: ballot.seq,
                            },
                        ));
                    }
                }
                self.arm_open_ballot(now);
            }
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
        self.clients.push(ClientRecord {
            id: id.clone(),
            conn: None,
        });
        // A backup may already hold a connection from this client.
        for entry in self.client_conns.values_mut() {
            if matches!(entry, ClientConn::Unregistered(name) if *name == id) {
                *entry = ClientConn::Known(idx);
            }
        }
        idx
    }

    fn resolve_client(&mut self, conn: ConnId) -> Option<u32> {
        match self.client_conns.get(&conn)? {
            ClientConn::Known(idx) => Some(*idx),
            ClientConn::Unregistered(id) => self.client_index.get(id).copied(),
        }
    }

    fn send_results_from(&mut self, conn: ConnId, from: Seq) {
        let first = from.0.max(1) as usize;
        let mut start = first - 1;
        while start < self.results.len() {
            let end = (start + MAX_RESULTS_PER_FRAME).min(self.results.len());
            self.out.push_back(Output::ToClient(
                conn,
                ServerMsg::Results {
                    view: self.view.number,
                    first: Seq(start as u64 + 1),
                    tallies: self.results[start..end].to_vec(),
                },
            ));
            start = end;
        }
    }

    // ----- ballots -------------------------------------------------------------------

    fn can_open(&self) -> bool {
        self.role == Role::Primary
            && self.clients.len() >= self.cfg.min_clients.max(1)
            && (self.ballots.len() as u64) < self.cfg.window.clamp(1, MAX_OPEN_BALLOTS)
            && self.cfg.ballots.is_none_or(|n| self.next_seq().0 <= n)
    }

    fn open_ballots(&mut self, now: Instant) {
        while self.can_open()
            && self
                .last_open
                .is_none_or(|t| t + self.cfg.ballot_interval <= now)
        {
            self.open_one_ballot(now);
        }
        self.arm_open_ballot(now);
    }

    fn open_one_ballot(&mut self, now: Instant) {
        let seq = self.next_seq();
        let voters = self.clients.len() as u32;
        info!(
            "ballot-open seq={seq} voters={voters} view={}",
            self.view.number
        );
        if let (Some(peer), Some(_)) = (&self.peer, self.view.backup) {
            self.out.push_back(Output::ToPeer(
                peer.conn,
                PeerMsg::Open {
                    view: self.view.number,
                    seq,
                    voters,
                },
            ));
        }
        for record in &self.clients[..voters as usize] {
            if let Some(conn) = record.conn {
                self.out.push_back(Output::ToClient(
                    conn,
                    ServerMsg::VoteRequest {
                        view: self.view.number,
                        seq,
                    },
                ));
            }
        }
        self.ballots.push_back(Ballot::new(seq, voters, now));
        self.timers
            .reask
            .get_or_insert(now + self.cfg.vote_timeout());
        self.last_open = Some(now);
    }

    /// Arms the ballot timer for the earliest moment the next ballot may open, if one may.
    fn arm_open_ballot(&mut self, now: Instant) {
        self.timers.open_ballot = self.can_open().then(|| {
            self.last_open
                .map_or(now, |t| (t + self.cfg.ballot_interval).max(now))
        });
    }

    fn count_vote(&mut self, client: u32, seq: Seq, yes: bool, now: Instant) {
        let Some(ballot) = self.ballot_mut(seq) else {
            debug!("vote-ignored client={client} seq={seq} reason=not-open");
            return;
        };
        match ballot.record(client, yes) {
            VoteOutcome::Counted => {}
            VoteOutcome::Duplicate => return,
            VoteOutcome::Conflict => {
                warn!("vote-conflict client={client} seq={seq} kept=first");
                return;
            }
            VoteOutcome::NotAVoter => {
                debug!("vote-ignored client={client} seq={seq} reason=not-in-electorate");
                return;
            }
        }
        if self.role != Role::Primary {
            return;
        }
        if let (Some(peer), Some(_)) = (&self.peer, self.view.backup) {
            self.out.push_back(Output::ToPeer(
                peer.conn,
                PeerMsg::Forward {
                    view: self.view.number,
                    seq,
                    client,
                    yes,
                },
            ));
        }
        self.commit_ready(now);
    }

    fn ballot_mut(&mut self, seq: Seq) -> Option<&mut Ballot> {
        let first = self.ballots.front()?.seq;
        let offset = seq.0.checked_sub(first.0)?;
        self.ballots.get_mut(offset as usize)
    }

    /// Commits the oldest ballot if all its votes are in. Results leave in seq order, so a
    /// later ballot that completes first waits for the ones before it.
    fn commit_ready(&mut self, now: Instant) {
        loop {
            let Some(front) = self.ballots.front_mut() else {
                return;
            };
            if front.state != BallotState::Open || !front.complete() {
                return;
            }
            let (seq, tally) = (front.seq, front.tally());
            match (&self.peer, self.view.backup) {
                (Some(peer), Some(_)) => {
                    front.state = BallotState::Committing;
                    self.out.push_back(Output::ToPeer(
                        peer.conn,
                        PeerMsg::Commit {
                            view: self.view.number,
                            seq,
                            tally,
                        },
                    ));
                    return;
                }
                // With a backup in the view but no link to it, the result waits: telling
                // clients now could lose it in a takeover.
                (None, Some(_)) => return,
                (_, None) => self.publish(now),
            }
        }
    }

    fn commit_acked(&mut self, seq: Seq, now: Instant) {
        match self.ballots.front() {
            Some(front) if front.seq == seq && front.state == BallotState::Committing => {
                self.publish(now);
                self.commit_ready(now);
            }
            _ => debug!("commit-ack-ignored seq={seq}"),
        }
    }

    /// The front ballot's result is final and known to the backup: tell every client.
    fn publish(&mut self, now: Instant) {
        let Some(ballot) = self.ballots.pop_front() else {
            return;
        };
        let tally = ballot.tally();
        self.results.push(tally);
        info!(
            "ballot-result seq={} yes={} no={} view={} ms={}",
            ballot.seq,
            tally.yes,
            tally.no,
            self.view.number,
            now.saturating_duration_since(ballot.opened).as_millis()
        );
        for record in &self.clients {
            if let Some(conn) = record.conn {
                self.out.push_back(Output::ToClient(
                    conn,
                    ServerMsg::Result {
                        view: self.view.number,
                        seq: ballot.seq,
                        tally,
                    },
                ));
            }
        }
        if self.ballots.is_empty() {
            self.timers.reask = None;
        }
        self.arm_open_ballot(now);
    }

    fn reask_missing_voters(&mut self, now: Instant) {
        if self.role != Role::Primary {
            return;
        }
        for ballot in &self.ballots {
            for (idx, record) in self.clients[..ballot.voters as usize].iter().enumerate() {
                if let (true, Some(conn)) = (ballot.awaits(idx as u32), record.conn) {
                    debug!("vote-reask client={} seq={}", record.id, ballot.seq);
                    self.out.push_back(Output::ToClient(
                        conn,
                        ServerMsg::VoteRequest {
                            view: self.view.number,
                            seq: ballot.seq,
                        },
                    ));
                }
            }
        }
        if !self.ballots.is_empty() {
            self.timers.reask = Some(now + self.cfg.vote_timeout());
        }
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
        let refusal = match self.role {
            Role::Primary if self.peer.is_some() => Some("a backup is already in service"),
            Role::Primary => None,
            Role::Joining | Role::Backup => Some("not the primary"),
        };
        if let Some(reason) = refusal {
            warn!("join-refused node={node} listen={listen} reason={reason}");
            self.out.push_back(Output::ToPeer(
                conn,
                PeerMsg::JoinRefused {
                    view: self.view.number,
                    reason: reason.to_string(),
                },
            ));
            self.out.push_back(Output::Close(conn, "join refused"));
            return;
        }
        info!("join-request node={node} listen={listen} their_view={view}");
        self.peer = Some(Peer {
            conn,
            addr: listen,
            last_heard: now,
            silent: false,
        });
        let new_view = ViewInfo {
            number: View(self.view.number.0 + 1),
            primary: self.cfg.listen,
            backup: Some(listen),
        };
        let snapshot = Snapshot {
            view: new_view,
            clients: self.clients.iter().map(|c| c.id.clone()).collect(),
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
        // backup is in sync from here on: install the view that includes it.
        self.install_view(new_view);
        self.out
            .push_back(Output::ToPeer(conn, PeerMsg::Install { view: new_view }));
        self.arm_peer_timers(now);
        // Ballots already complete while we were alone still need the backup's ack.
        self.commit_ready(now);
    }

    fn install_view(&mut self, view: ViewInfo) {
        info!("view-change role={} view={view}", self.role);
        self.view = view;
        for record in &self.clients {
            if let Some(conn) = record.conn {
                self.out
                    .push_back(Output::ToClient(conn, ServerMsg::NewView { view }));
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        if self.role != Role::Joining {
            warn!("snapshot-ignored role={}", self.role);
            return;
        }
        self.clients.clear();
        self.client_index.clear();
        for id in snapshot.clients {
            self.register(id);
        }
        self.results = snapshot.results;
        self.ballots = snapshot
            .open
            .into_iter()
            .map(|b| Ballot::restore(b.seq, b.voters, b.votes, now))
            .collect();
        self.view = snapshot.view;
        self.role = Role::Backup;
        info!(
            "joined view={} clients={} committed={} open={}",
            self.view,
            self.clients.len(),
            self.results.len(),
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
                self.results.push(tally);
            }
            _ if seq.0 <= self.results.len() as u64 => {}
            _ => {
                warn!(
                    "replication-gap commit seq={seq} committed={}",
                    self.results.len()
                );
                return;
            }
        }
        self.out
            .push_back(Output::ToPeer(conn, PeerMsg::CommitAck { view, seq }));
    }

    fn arm_peer_timers(&mut self, now: Instant) {
        self.timers.heartbeat = Some(now);
        self.timers.peer_dead = Some(now + self.cfg.peer_timeout());
    }
}
