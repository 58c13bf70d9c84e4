//! What a server is, with what only that role holds (quinn's `State::Handshake(..)`), and
//! the only functions that change it: each asserts where it starts from (raft-rs's
//! `become_*`). [`crate::proto::Role`] stays the wire and status type.
//!
//! ```text
//!   start ──► Joining ──Install──► Backup ──majority accepts takeover──► Primary
//!   start ─────────────────────────────────────────────────────────────► Primary
//!   any of them ──replaced, or no primary to join──► SteppedDown (exits)
//! ```

use super::membership::Members;
use super::recovery::Recovery;
use crate::link::ConnId;
use crate::proto::{Role, Seq, ViewInfo};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

// One per process, and the primary's variant is the one that runs: boxing it would only
// add a pointer chase to every vote.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RoleState {
    Joining(Joining),
    Backup,
    Primary(Primary),
    /// Replaced or given up: it has asked to exit and handles nothing more.
    SteppedDown {
        was: Role,
    },
}

/// A server waiting out its start delay, then dialing the primary for a snapshot.
#[derive(Debug)]
pub struct Joining {
    /// A joiner that still has no primary to join by then gives up (exits): it has no
    /// state to serve with, and its primary, if alive, has replaced it by then. Pushed back
    /// by a refusal from a live primary that wants a backup later.
    pub give_up_at: Instant,
}

/// What only the primary holds.
#[derive(Debug, Default)]
pub struct Primary {
    /// A view with a backup that its witnesses accepted, sent to the backup as `Install`:
    /// installed here when the backup acknowledges it.
    pub pending_install: Option<Installing>,
    /// Votes counted and not yet forwarded to the peer: `(seq, client, yes)`.
    pub pending_forward: Vec<(Seq, u32, bool)>,
    /// A fresh primary that found clients with history (a cold restart): it rebuilds the
    /// results from their logs before it acts.
    pub recovery: Option<Recovery>,
    /// Client connections being caught up: the next seq to send each. (Ordered maps
    /// here: a simulated run must replay exactly, and `HashMap` iterates in a random
    /// order per process.)
    pub catching_up: BTreeMap<ConnId, Seq>,
    /// `Resend`s from clients that follow a view newer than ours (ours is being
    /// installed): answered when it is.
    pub resend_after_install: BTreeMap<ConnId, Seq>,
    /// When it opened its latest ballot (ballots are spaced by `--ballot-interval-ms`).
    pub last_open: Option<Instant>,
    /// A server started as primary opens ballot 1 no sooner than
    /// [`super::config::NodeConfig::first_ballot_wait`] after it started: by then every running client whose servers both died has looked
    /// further and said hello here, and a client with history makes this a cold restart.
    /// Without the wait, a new client arriving first could start a new history beside
    /// theirs (docs/PROTOCOL.md §9).
    pub first_ballot_at: Option<Instant>,
    /// When it last spawned a backup (spawns are spaced by a heartbeat).
    pub last_spawn: Option<Instant>,
    /// Clients that asked to leave (client indexes), and how far each has got. One told
    /// `Left` stays here until its connection closes, so that it is not taken back in as a
    /// joiner meanwhile. Not replicated: a leaving client asks each new primary.
    pub leaving: BTreeMap<u32, Leaving>,
    /// Clients being removed (`remove-client`, or absent past `--absent-after-ms`), with
    /// why and the connections waiting for the answer.
    pub removing: BTreeMap<u32, Removal>,
}

/// How far a client that asked to leave has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaving {
    /// It is still a member, or a voter of an open ballot, or a view with it is on its way.
    Asked,
    /// Free to go, and sent no result after `last_sent`: it is told `Left` once a member
    /// has logged `last_sent`. Told at once, a leaver could take the only copy of a result
    /// with it, and a cold restart would count that ballot again (docs/PROTOCOL.md §9).
    Draining { last_sent: Seq },
    /// Told `Left`; still sent no result after `last_sent`.
    Told { last_sent: Seq },
}

/// A removal under way.
#[derive(Debug, Default)]
pub struct Removal {
    /// `remove-client` connections waiting for the answer (none for an absent client).
    pub waiting: Vec<ConnId>,
    pub reason: RemovalReason,
    /// Refused for good, with this reason, once a view without it is installed.
    pub refuse: Option<String>,
}

/// Why a client is being removed (the `reason=` of `client-removed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RemovalReason {
    /// `pbvote remove-client`.
    #[default]
    Operator,
    /// Disconnected longer than `--absent-after-ms`.
    Absent,
    /// Its log lacks results no server holds any more: it was refused for good.
    ResultsUnavailable,
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemovalReason::Operator => "operator",
            RemovalReason::Absent => "absent",
            RemovalReason::ResultsUnavailable => "results-unavailable",
        })
    }
}

/// A view waiting for its backup's `InstallAck`, its members, and the clients it removes
/// (whose votes no open ballot waits for once it is installed).
#[derive(Clone, Debug)]
pub struct Installing {
    pub view: ViewInfo,
    pub members: Members,
    pub removed: Members,
}

impl Primary {
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }
}

/// Why a server steps down (exits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// Someone installed a view newer than ours that does not keep us: we were replaced.
    Replaced {
        evidence: Evidence,
        installed: ViewInfo,
        ours: ViewInfo,
    },
    /// The primary we came to join was replaced; its successor spawns its own backup.
    FencedWhileJoining { view: ViewInfo },
    /// No primary answered our join in time.
    NoPrimaryToJoin { primary: SocketAddr, waited_ms: u64 },
}

/// How a server learned of a newer installed view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// A client answered a message of ours with `Stale`.
    ClientSaysStale,
    /// A client rejected our proposal, following a newer view.
    ClientRejected,
    /// Our peer sent `Fence`.
    FencedByPeer,
}

impl Evidence {
    fn as_str(self) -> &'static str {
        match self {
            Evidence::ClientSaysStale => "client-says-stale",
            Evidence::ClientRejected => "client-rejected",
            Evidence::FencedByPeer => "fenced-by-peer",
        }
    }
}

impl fmt::Display for StepDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepDown::Replaced {
                evidence,
                installed,
                ours,
            } => write!(
                f,
                "{}: view {installed} replaced our view {ours}",
                evidence.as_str()
            ),
            StepDown::FencedWhileJoining { view } => {
                write!(f, "fenced while joining: view {view} is newer")
            }
            StepDown::NoPrimaryToJoin { primary, waited_ms } => {
                write!(f, "no primary to join at {primary} within {waited_ms} ms")
            }
        }
    }
}

impl RoleState {
    /// The wire and status name of the role (a stepped-down server reports what it was).
    pub fn wire(&self) -> Role {
        match self {
            RoleState::Joining(_) => Role::Joining,
            RoleState::Backup => Role::Backup,
            RoleState::Primary(_) => Role::Primary,
            RoleState::SteppedDown { was } => *was,
        }
    }

    pub fn is_primary(&self) -> bool {
        matches!(self, RoleState::Primary(_))
    }

    pub fn is_joining(&self) -> bool {
        matches!(self, RoleState::Joining(_))
    }

    pub fn is_backup(&self) -> bool {
        matches!(self, RoleState::Backup)
    }

    pub fn has_stepped_down(&self) -> bool {
        matches!(self, RoleState::SteppedDown { .. })
    }

    pub fn primary(&self) -> Option<&Primary> {
        match self {
            RoleState::Primary(p) => Some(p),
            _ => None,
        }
    }

    pub fn primary_mut(&mut self) -> Option<&mut Primary> {
        match self {
            RoleState::Primary(p) => Some(p),
            _ => None,
        }
    }

    /// A primary that is rebuilding its results from the clients' logs.
    pub fn is_recovering(&self) -> bool {
        self.primary().is_some_and(Primary::is_recovering)
    }

    /// Joining → Backup on the primary's `Install`; Backup → Backup for a later one.
    pub fn become_backup(&mut self) {
        assert!(
            matches!(self, RoleState::Joining(_) | RoleState::Backup),
            "invalid transition [{} -> backup]",
            self.wire()
        );
        *self = RoleState::Backup;
    }

    /// Backup → Primary when a majority accepted its takeover. Returns whether it took
    /// over (false: it was primary already, and stays so in a newer view).
    pub fn become_primary(&mut self) -> bool {
        match self {
            RoleState::Primary(_) => false,
            RoleState::Backup => {
                *self = RoleState::Primary(Primary::default());
                true
            }
            RoleState::Joining(_) | RoleState::SteppedDown { .. } => {
                panic!("invalid transition [{} -> primary]", self.wire())
            }
        }
    }

    /// Any live role → SteppedDown.
    pub fn step_down(&mut self) {
        assert!(
            !self.has_stepped_down(),
            "invalid transition [stepped-down -> stepped-down]"
        );
        *self = RoleState::SteppedDown { was: self.wire() };
    }
}
