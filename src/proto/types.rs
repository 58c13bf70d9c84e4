//! Newtypes for the things that must never be confused with one another.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// A configuration number. Only grows; every server message carries one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct View(pub u64);

/// A ballot's sequence number, 1, 2, 3, ... `Seq(0)` means "none yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The following seq (saturating: a seq from the network may be anything).
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

/// A client's operator-chosen name, at most [`crate::proto::limits::MAX_CLIENT_ID_LEN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub String);

/// A server process's identity, random per process start, so a restarted replica on the
/// same address is recognisably a different process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// The outcome of one ballot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub yes: u32,
    pub no: u32,
}

/// The digest of a history, results `1..=k`: FNV-1a run over each result in turn (its
/// seq, yes and no counts as 8, 4 and 4 little-endian bytes). A client sends its log's in
/// its hello and the primary compares it with its own at that seq, so a log from another
/// history (a cold restart that gave up results, docs/PROTOCOL.md §9) is told apart even
/// where its seqs are ones this history also has. It guards against accidents, not
/// against a hostile client: two different histories share one digest with a chance of
/// about 2^-64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryDigest(pub u64);

impl HistoryDigest {
    /// The digest of no results at all.
    pub const EMPTY: HistoryDigest = HistoryDigest(FNV_OFFSET);

    /// The digest of this history with result `seq` appended.
    pub fn then(self, seq: Seq, tally: Tally) -> HistoryDigest {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&seq.0.to_le_bytes());
        bytes[8..12].copy_from_slice(&tally.yes.to_le_bytes());
        bytes[12..].copy_from_slice(&tally.no.to_le_bytes());
        HistoryDigest(fnv1a(self.0, &bytes))
    }

    /// The digest after `tallies`, the results from `first` on.
    pub fn over(self, first: Seq, tallies: impl IntoIterator<Item = Tally>) -> HistoryDigest {
        let mut digest = self;
        for (i, tally) in tallies.into_iter().enumerate() {
            digest = digest.then(Seq(first.0.wrapping_add(i as u64)), tally);
        }
        digest
    }
}

impl Default for HistoryDigest {
    fn default() -> HistoryDigest {
        HistoryDigest::EMPTY
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, continued from `state` over `bytes`.
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Who serves in a view. `backup: None` is a primary-only view: clients vote to the primary
/// alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewInfo {
    pub number: View,
    pub primary: SocketAddr,
    pub backup: Option<SocketAddr>,
}

impl ViewInfo {
    /// The servers a client sends its votes to in this view.
    pub fn servers(&self) -> impl Iterator<Item = SocketAddr> {
        std::iter::once(self.primary).chain(self.backup)
    }
}

/// A membership as a client can record it: how many members, and a digest of their
/// names (the wrapping sum of each name's hash, so it does not depend on order and a
/// server keeps it as members come and go). A fresh primary after a cold restart knows
/// no names; it knows it holds every member of a view once the clients that say they are
/// members are `count` and their names add up to `digest` (docs/PROTOCOL.md §9).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Fingerprint {
    pub count: u32,
    pub digest: u64,
    /// Each name's hash is FNV-1a then a 64-bit finalizer. Without it (a record written
    /// before session 11, which lacks the field) it is bare FNV-1a, whose sums match for
    /// names that differ in their last byte (h(c0) + h(c3) = h(c1) + h(c2)): a search for
    /// the missing members could then take non-members for them.
    #[serde(default)]
    pub mixed: bool,
}

impl Fingerprint {
    /// No members, in the hash every fingerprint is now made with.
    pub const EMPTY: Fingerprint = Fingerprint {
        count: 0,
        digest: 0,
        mixed: true,
    };

    /// One name's share of a digest made with `mixed` or without.
    pub fn name_hash(id: &ClientId, mixed: bool) -> u64 {
        let fnv = fnv1a(FNV_OFFSET, id.0.as_bytes());
        if mixed {
            mix64(fnv)
        } else {
            fnv
        }
    }

    pub fn of<'a>(ids: impl IntoIterator<Item = &'a ClientId>) -> Fingerprint {
        let mut fp = Fingerprint::EMPTY;
        for id in ids {
            fp.add(id);
        }
        fp
    }

    pub fn add(&mut self, id: &ClientId) {
        self.count = self.count.saturating_add(1);
        let hash = Fingerprint::name_hash(id, self.mixed);
        self.digest = self.digest.wrapping_add(hash);
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit moves about half the output bits, so
/// sums of finalized hashes of related names carry no pattern FNV-1a's last step leaves.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What a client keeps, with its promise, of the membership of a view it followed or a
/// proposal it accepted: the view's number, the membership's fingerprint, and whether
/// the client is one of those members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberRecord {
    pub view: View,
    pub members: Fingerprint,
    pub member: bool,
}

/// What a server is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Opens ballots, counts votes, tells results.
    Primary,
    /// Waiting out its start delay, then connecting to the primary for a snapshot.
    Joining,
    /// Holds a copy of the primary's state; tells no results.
    Backup,
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for HistoryDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Joining => "joining",
            Role::Backup => "backup",
        })
    }
}

impl fmt::Display for ViewInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backup {
            Some(b) => write!(f, "{}[p={},b={}]", self.number, self.primary, b),
            None => write!(f, "{}[p={},b=none]", self.number, self.primary),
        }
    }
}
