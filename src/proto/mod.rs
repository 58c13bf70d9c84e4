//! The wire: every type that crosses a socket, the frame codec and its limits.
//!
//! Nothing here does I/O. The reactor reads bytes into a buffer and asks
//! [`codec::decode_frame`] for messages; the cores produce message values that the
//! reactor encodes with [`codec::encode_frame`].

pub mod codec;
pub mod limits;
pub mod messages;
pub mod types;

pub use messages::{
    ClientMsg, ConnectionStats, Hello, JoinRefusal, LinkKind, LoopStats, MemberStatus, PeerMsg,
    PeerStatus, RemoveReply, ServerMsg, Snapshot, StatusReply,
};
pub use types::{
    ClientId, Fingerprint, HistoryDigest, MemberRecord, NodeId, Role, Seq, Tally, View, ViewInfo,
};
