//! Every message of the protocol. One enum per link kind and direction, matched
//! exhaustively everywhere (no `_ =>` arm), so a new message shows every place that must
//! handle it. Variant names are unique across all enums: a frame sent on the wrong kind of
//! link can never decode as something else, and `tcpdump -X` shows the name in clear.
//!
//! Every connection to a server starts with one [`Hello`] frame that fixes its link kind:
//! a client link carries [`ClientMsg`] up and [`ServerMsg`] down; a peer link carries
//! [`PeerMsg`] both ways; a status link carries one [`StatusReply`] down and is closed.

use super::types::{
    ClientId, Fingerprint, HistoryDigest, MemberRecord, NodeId, Role, Seq, Tally, View, ViewInfo,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The first frame on every connection to a server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Hello {
    /// A voting client. `last_seq` is the last ballot in its log, so the server can send
    /// every result it lacks; `view` is the newest view it has accepted (0: none yet);
    /// `digest`, that of its log `1..=last_seq`: a log of another history is refused.
    Client {
        id: ClientId,
        last_seq: Seq,
        view: View,
        digest: HistoryDigest,
    },
    /// A server that wants to join as backup. `listen` is the address it serves clients on
    /// (the real port when it was started with port 0).
    Peer {
        node: NodeId,
        listen: SocketAddr,
        view: View,
    },
    /// `pbvote status`: answered with one [`StatusReply`], then closed.
    Status,
    /// `pbvote remove-client`: take client `id`, gone for good, out of the membership.
    /// Answered with one [`RemoveReply`] once that is agreed (or refused), then closed.
    Remove { id: ClientId },
}

/// What a connection carries after its [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Client,
    Peer,
    Status,
    /// `pbvote remove-client`: one request in the hello, one answer.
    Admin,
}

impl Hello {
    pub fn link_kind(&self) -> LinkKind {
        match self {
            Hello::Client { .. } => LinkKind::Client,
            Hello::Peer { .. } => LinkKind::Peer,
            Hello::Status => LinkKind::Status,
            Hello::Remove { .. } => LinkKind::Admin,
        }
    }
}

/// Client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// The client's votes, `(seq, yes)`, sent to every server of the view it accepted.
    /// Votes on ballots asked for together travel together.
    Votes { view: View, votes: Vec<(Seq, bool)> },
    /// "Send me every result from `from` on": the client saw a result past a gap.
    Resend { view: View, from: Seq },
    /// The client accepted the proposed `view`. It reports what the proposer needs to
    /// finish the past: the last ballot in its log and the votes it cast on later ballots.
    Accept {
        view: View,
        last_seq: Seq,
        votes: Vec<(Seq, bool)>,
        /// For a recovering proposer only: the client's last logged tallies, ending at
        /// `last_seq` (at most [`crate::proto::limits::MAX_RECOVERY_TAIL`]).
        tail: Vec<Tally>,
        /// The digest of the log before `tail`: what the rebuilt history starts from.
        tail_base: HistoryDigest,
        /// For a recovering proposer only: what the client recorded of the membership of
        /// the view it follows, and of the last proposal it accepted before this one.
        followed_members: Option<MemberRecord>,
        promised_members: Option<MemberRecord>,
    },
    /// The client refuses the proposed view `proposed`: it follows the installed view
    /// `accepted` (if that is newer than the proposer's own view, the proposer was replaced
    /// and steps down), it promised a proposal numbered `promised` >= `proposed` (propose
    /// above it), or it heard from the primary of `accepted` within its lease (retry after
    /// `retry_after_ms`).
    Reject {
        proposed: View,
        accepted: ViewInfo,
        promised: View,
        retry_after_ms: Option<u64>,
    },
    /// A reply to any message tagged with a view older than the client's: the sender has
    /// been replaced by `accepted` and must step down.
    Stale { accepted: ViewInfo },
    /// "Your lease renewal `round` reached me": the primary holds this client's lease for
    /// one lease time from when it sent that round.
    /// `logged`: the last seq in the client's log. A leaver is told `Left` only once a
    /// member has logged every result the leaver may have (docs/PROTOCOL.md §9).
    LeaseAck { view: View, round: u64, logged: Seq },
    /// "Take me out of the membership": the client reached `--until` or was told to stop.
    /// It keeps voting on every ballot it is a voter of until the primary answers `Left`.
    Leave { view: View },
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Registration accepted; the server's current view, and the lease: how long after
    /// hearing from a primary the client refuses to let anyone else take over.
    /// `members`: the view's membership, and `member` whether this client is in it (what a
    /// client records for a cold restart).
    Welcome {
        view: ViewInfo,
        lease_ms: u64,
        members: Fingerprint,
        member: bool,
    },
    /// A view a majority of clients accepted: vote to these servers from now on. `lease_ms`:
    /// how long the primary holds a client's lease after each renewal. `members`, `member`
    /// as in `Welcome`.
    NewView {
        view: ViewInfo,
        lease_ms: u64,
        members: Fingerprint,
        member: bool,
    },
    /// "Accept `view`, in which I am primary": answered with `Accept` or `Reject`. `base`
    /// is the installed view the proposer's state comes from; a client refuses a proposal
    /// built on a view older than the one it follows.
    /// A `recovering` proposer lost all state (both replicas died, a cold restart): it
    /// rebuilds the results from the clients' logs, and the base check does not apply.
    Propose {
        view: ViewInfo,
        base: View,
        recovering: bool,
        /// The proposing process: a re-sent proposal from the same process is accepted
        /// again, not refused as a second use of the number.
        node: NodeId,
        /// The lease the proposer counts on from a client that accepts (as in `Welcome`).
        lease_ms: u64,
        /// The proposed view's membership, and whether this client is in it.
        members: Fingerprint,
        member: bool,
    },
    /// The primary's lease renewal, every heartbeat interval; answered with `LeaseAck`.
    /// `lease_ms` as in `Welcome`: every renewal says how long it lasts.
    Lease {
        view: View,
        round: u64,
        lease_ms: u64,
    },
    /// Ballots `first .. first + count` are open: please vote on each.
    VoteRequest { view: View, first: Seq, count: u32 },
    /// The final tallies of ballots `first`, `first + 1`, ... in order: the results
    /// published together, or a catch-up.
    Results {
        view: View,
        first: Seq,
        tallies: Vec<Tally>,
    },
    /// The server will not serve this client; the connection closes after this frame.
    /// `permanent`: no server of this service will, as this client's log stands (its log
    /// holds results the service lacks, or lacks results it no longer holds): the client
    /// exits 1 with `reason`. Otherwise it tries again (a joining server, a full registry).
    Refused {
        view: View,
        reason: String,
        permanent: bool,
    },
    /// The answer to `Leave`: a view without this client is installed and no open ballot
    /// waits for its vote. It may go.
    Left { view: View },
}

/// Server to server, both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Primary to joining backup: the whole replicated state, then the live stream follows
    /// on the same connection.
    Snapshot(Box<Snapshot>),
    /// Primary to its backup (or the joiner becoming it): a majority accepted `view`, whose
    /// voters are the client indexes `members`; act as its backup. `removed`: clients an
    /// operator removed, whose votes no open ballot waits for any more. The primary installs it
    /// (and tells the clients) only on `InstallAck`, so no client can follow a view whose
    /// backup could not take over, or would count its majorities over other members.
    Install {
        view: ViewInfo,
        members: Vec<u32>,
        removed: Vec<u32>,
    },
    /// Backup to primary: `Install` applied; everything sent before it has arrived.
    InstallAck { view: View },
    /// Both ways, every heartbeat interval.
    Heartbeat { view: View },
    /// Primary to backup: a client registered and got the next client index.
    Register { view: View, client: ClientId },
    /// Primary to backup: ballot `seq` opened; its electorate is the members of the view
    /// both have installed, `voters` of them (a check: the backup refuses a count that is
    /// not its own).
    Open { view: View, seq: Seq, voters: u32 },
    /// Primary to backup: votes the primary counted, `(seq, client index, yes)`.
    Forward {
        view: View,
        votes: Vec<(Seq, u32, bool)>,
    },
    /// Primary to backup: ballot `seq` is final with this tally; acknowledge before the
    /// primary tells any client.
    Commit { view: View, seq: Seq, tally: Tally },
    /// Backup to primary: ballot `seq`'s final tally is recorded.
    CommitAck { view: View, seq: Seq },
    /// Primary to a server that asked to join: no. The connection closes after this frame.
    JoinRefused { view: View, reason: JoinRefusal },
    /// To a peer that speaks for an older view: you were replaced by `view`; step down.
    /// The connection closes after this frame.
    Fence { view: ViewInfo },
}

/// Why a server refuses a joiner. The joiner acts on it: after `HasBackup` it stops
/// trying once its own deadline passes; after any other it keeps trying (the refuser is a
/// live primary that will want a backup later, or not the primary at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRefusal {
    /// The primary has a backup (or a joiner) linked already.
    HasBackup,
    /// The primary is rebuilding its results after a cold restart.
    Recovering,
    /// The primary has fewer than `--min-clients` registered clients: every view change
    /// needs them as witnesses.
    WaitingForClients,
    /// The server is not a primary.
    NotPrimary,
}

impl std::fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoinRefusal::HasBackup => "has-backup",
            JoinRefusal::Recovering => "recovering",
            JoinRefusal::WaitingForClients => "waiting-for-clients",
            JoinRefusal::NotPrimary => "not-primary",
        })
    }
}

/// The replicated state a joining backup receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub view: ViewInfo,
    /// Registered clients in index order.
    pub clients: Vec<ClientId>,
    /// The voters of `view`: client indexes.
    pub members: Vec<u32>,
    /// The committed results the primary holds: `results[i]` is ballot
    /// `results_first + i` (a primary rebuilt by a cold restart holds only recent ones).
    pub results_first: Seq,
    pub results: Vec<Tally>,
    /// The digest of the history before `results_first`.
    pub results_base: HistoryDigest,
    /// Ballots opened and not yet committed, in seq order, starting right after the results.
    pub open: Vec<OpenBallot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenBallot {
    pub seq: Seq,
    /// Its electorate: client indexes.
    pub voters: Vec<u32>,
    /// The votes counted so far: `(client index, yes)`.
    pub votes: Vec<(u32, bool)>,
}

/// Server to `pbvote remove-client`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RemoveReply {
    /// A view without the client is installed (`view`); `unblocked`: the open ballots that
    /// waited for its vote and no longer do.
    Removed { view: View, unblocked: Vec<Seq> },
    /// No client of that name ever registered here.
    NoSuchClient,
    /// This server cannot remove anyone now: it is not the acting primary. `primary`: the
    /// one to ask, if known.
    AskPrimary { primary: Option<SocketAddr> },
    /// This server is a fresh primary after a cold restart, still waiting for the members
    /// of view `view` (`present` of `members` said hello): it removes nobody before it
    /// knows the membership. Start the missing clients.
    Recovering {
        view: View,
        present: u32,
        members: u32,
    },
}

/// Server to `pbvote status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub node: NodeId,
    pub role: Role,
    pub view: ViewInfo,
    /// The next ballot the primary will open.
    pub next_seq: Seq,
    /// Last ballot whose result is final.
    pub committed: Seq,
    pub open_ballots: u64,
    /// A view this server proposed and a majority of clients has not accepted yet.
    pub proposing: Option<View>,
    pub clients: Vec<ClientId>,
    pub connected_clients: u64,
    pub peer: Option<PeerStatus>,
    /// The installed view's members: its voters.
    pub members: Vec<MemberStatus>,
    /// What the server process holds of connections (filled in by the host, not the core).
    pub connections: Option<ConnectionStats>,
    /// How its event loop has kept up since it started (filled in by the host).
    pub event_loop: Option<LoopStats>,
}

/// The event loop's liveness: a loop that falls behind sends its heartbeats late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopStats {
    pub heartbeats_sent: u64,
    /// The longest time between two heartbeats sent on one peer link, in ms.
    pub heartbeat_gap_max_ms: u64,
    /// The longest loop turn (from the wakeup to the end of its work), in ms.
    pub turn_max_ms: u64,
    /// The same two since the previous `status` answer (a script measures a phase by
    /// asking before and after it).
    pub recent_heartbeat_gap_max_ms: u64,
    pub recent_turn_max_ms: u64,
}

/// A server's connections and its `--max-connections` (as Redis' `connected_clients`,
/// `maxclients` and `rejected_connections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// Open now, any kind.
    pub open: u64,
    pub max: u64,
    /// Refused or closed unanswered for want of room since the server started.
    pub rejected: u64,
}

/// One member, as the server answering `status` sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: ClientId,
    /// It has a connection to this server now.
    pub connected: bool,
    /// How long it has had none, if it had one and lost it.
    pub absent_ms: Option<u64>,
    /// The first ballot it is a voter of (`None`: it was a member before this server
    /// learned the members from a snapshot).
    pub voter_from: Option<Seq>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub addr: Option<SocketAddr>,
    pub connected: bool,
    /// Milliseconds since the last frame from the peer.
    pub last_heard_ms: Option<u64>,
    pub alive: bool,
}
