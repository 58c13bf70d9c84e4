//! Every bound on what a peer can make us hold, in one place (TigerBeetle's "put a limit on
//! everything"). A peer that exceeds one is disconnected with a log line naming the limit.

/// Largest frame body we accept or produce, in bytes. A snapshot is the biggest message: with
/// 10,000 clients of 64-byte ids and the retained result history it stays well below this.
/// A length prefix above it is refused before a single body byte is buffered.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest first frame on a connection (a `Hello`: an id or an address, and two numbers).
/// Until it has arrived a connection is nobody's, and may not make us hold more than this.
pub const MAX_HELLO_LEN: usize = 4 * 1024;

/// Largest frame on a client link, either way. The biggest are a catch-up `Results` of
/// [`MAX_RESULTS_PER_FRAME`] tallies (~80 KiB) and an `Accept` with a window of votes: a
/// client link never needs the room a snapshot does.
pub const MAX_CLIENT_FRAME_LEN: usize = 1024 * 1024;

/// Longest client id, in bytes. Ids are names chosen by operators, not payloads.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Bytes a client connection may have queued for writing before the server gives up on it
/// (Redis' client-output-buffer-limit): a client that does not read is cut, not allowed to
/// grow our memory. It reconnects and catches up from its log position.
pub const MAX_CLIENT_OUTBUF: usize = 4 * 1024 * 1024;

/// Same for the peer link, which carries snapshots and so needs more room.
pub const MAX_PEER_OUTBUF: usize = 64 * 1024 * 1024;

/// Descriptors a server keeps back from its default `--max-connections` (the soft
/// descriptor limit less this): the listener, two epoll sets, the signal pipe, stdio, a
/// spawn's pipes, and room for the peer link and a joiner, which are never refused.
pub const FDS_RESERVED: usize = 64;

/// Connections past `--max-connections` held while their hello is awaited: a peer, a
/// joining backup, `status` and `remove-client` are let in, a client is refused with a
/// reason. Beyond this many, a new connection is closed at once, unanswered.
pub const MAX_OVER_LIMIT_HELLOS: usize = 16;

/// A connection whose hello has not arrived this long after it was accepted (a half-open
/// or silent one) is closed.
pub const HELLO_DEADLINE_MS: u64 = 5_000;

/// After `accept` failed for want of descriptors (EMFILE, ENFILE), it is tried again this
/// much later, not at every turn: the connections wait in the kernel's backlog meanwhile.
pub const ACCEPT_RETRY_MS: u64 = 100;

/// Most ballots open at once (the upper bound for `--window`). A client answers a
/// `VoteRequest` for at most this many ballots.
pub const MAX_OPEN_BALLOTS: u64 = 1024;

/// Votes a client holds for ballots it has not logged yet (a server may ask far ahead of
/// its log). Beyond it the furthest ahead are let go: a re-ask casts them again, the same
/// way (a client's vote is a function of the ballot), and an `Accept` carries the rest.
pub const MAX_VOTES_HELD: usize = 4 * MAX_OPEN_BALLOTS as usize;

/// Most results sent in one catch-up frame; a client further behind gets several.
pub const MAX_RESULTS_PER_FRAME: usize = 4096;

/// Catch-up frames queued for one client at a time; the next burst goes once they are
/// written (~60,000 results, under a megabyte).
pub const CATCHUP_BURST: usize = 16;

/// Final results a server keeps (2 MiB, and as much again for the history's digest at each
/// of them, which a hello is checked against): the oldest beyond it are let go, so that memory
/// and a joiner's snapshot (~4 MB at most) stay bounded on a cluster that runs for ever.
/// A client that comes back further behind than this cannot be caught up
/// (`results-unavailable`): at the default one ballot a second that is three days away.
pub const MAX_RESULTS_HELD: usize = 262_144;

/// The history is trimmed only once it holds this many results beyond `MAX_RESULTS_HELD`:
/// each trim moves the whole history, so it is done in steps, not per result.
pub const RESULTS_TRIM_STEP: usize = MAX_RESULTS_HELD / 8;

/// Most clients one primary registers. Beyond it, a new client is refused with a reason.
pub const MAX_CLIENTS: usize = 100_000;

/// Results each client keeps in memory and reports to a recovering primary after a cold
/// restart. A cold restart rebuilds every result within this many ballots of the most
/// advanced client's log; a client further behind cannot be caught up.
pub const MAX_RECOVERY_TAIL: usize = 64;

/// Most votes the primary holds back before it forwards them to the backup (they also
/// leave with every `Commit` and heartbeat).
pub const MAX_FORWARD_BATCH: usize = 4096;

/// How long `pbvote client` waits, once it is done (`--until`) or told to stop (SIGTERM,
/// SIGINT), for the primary to agree that it left (`Left`). Past it the client exits 1,
/// saying it may still be a voter: `pbvote remove-client` takes it out. A leave takes one
/// view change and the ballots the client still votes on, so this is generous.
pub const LEAVE_WAIT_MS: u64 = 30_000;

/// The most bytes one tally takes in CBOR (a two-entry map of `u32`s: 18), rounded up.
pub const MAX_TALLY_LEN: usize = 32;

// How the limits must relate; a change that breaks one does not compile.
const _: () = {
    // A hello fits any link's frames, a client frame fits the largest frame.
    assert!(MAX_HELLO_LEN <= MAX_CLIENT_FRAME_LEN && MAX_CLIENT_FRAME_LEN <= MAX_FRAME_LEN);
    // A hello has room for the longest client id and its two numbers.
    assert!(MAX_CLIENT_ID_LEN + 64 <= MAX_HELLO_LEN);
    // A full catch-up frame fits a client frame, and a whole burst the client's output
    // buffer, so that a catch-up never cuts the client it serves.
    assert!(MAX_RESULTS_PER_FRAME * MAX_TALLY_LEN <= MAX_CLIENT_FRAME_LEN / 2);
    assert!(CATCHUP_BURST * MAX_RESULTS_PER_FRAME * MAX_TALLY_LEN <= MAX_CLIENT_OUTBUF);
    // The largest frame of each link fits its output buffer.
    assert!(MAX_CLIENT_FRAME_LEN <= MAX_CLIENT_OUTBUF && MAX_FRAME_LEN <= MAX_PEER_OUTBUF);
    // A cold restart's tail is within the history a server keeps; the history is
    // trimmed in steps.
    assert!(MAX_RECOVERY_TAIL <= MAX_RESULTS_HELD && RESULTS_TRIM_STEP > 0);
    // The retained history alone fits a snapshot frame.
    assert!((MAX_RESULTS_HELD + RESULTS_TRIM_STEP) * MAX_TALLY_LEN <= MAX_FRAME_LEN);
    // A forward batch of (seq, index, vote) triples fits a peer frame.
    assert!(MAX_FORWARD_BATCH * 32 <= MAX_FRAME_LEN);
};
