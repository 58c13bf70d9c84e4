//! The connections of one event loop: a slab whose key is the mio token, generation-checked
//! handles, the loop's one read scratch buffer, and the list of connections to write at the
//! end of the turn (each socket is written once per loop turn).

use super::conn::{Conn, Expect, Fill, QueueError, READ_CHUNK};
use crate::link::ConnId;
use crate::proto::codec::Wire;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io;
use std::net::SocketAddr;

/// Held output on one connection is written once this much waits, whatever the timer.
const HELD_OUTPUT_LIMIT: usize = 16 * 1024;

pub struct Conns {
    slab: Slab<Conn>,
    next_gen: u32,
    /// Connections with output queued this turn.
    dirty: Vec<ConnId>,
    /// Connections whose queued output may wait for [`Conns::release_held`]: nobody waits
    /// for it, so several turns' worth leaves in one write. Anything urgent queued behind
    /// it (the connection is then also dirty) takes it along, in order.
    held: Vec<ConnId>,
    /// Every `read` lands here; frames decode from here, and a connection copies only a
    /// frame cut short.
    scratch: Vec<u8>,
    /// The connection whose bytes are in `scratch`: before the next read overwrites them,
    /// it keeps what it did not decode.
    scratch_owner: Option<ConnId>,
    /// A message for many connections is encoded here once.
    encoded: Vec<u8>,
    /// Write buffers above `KEEP_BUFFER` of connections that wrote all they had, lent to
    /// the next connection that queues. A busy loop reuses the same buffers turn after
    /// turn instead of allocating and growing one per connection and turn (with musl's
    /// allocator that churn cost a fifth of the window-16 throughput), and an idle
    /// connection holds at most `KEEP_BUFFER` bytes, not its busiest moment's.
    spare: Vec<Vec<u8>>,
}

/// A connection keeps a write buffer this small when it empties: a turn's frames to one
/// client at window 1 (a result and the next request, ~80 bytes) fit.
const KEEP_BUFFER: usize = 256;
/// At most this many spare write buffers are kept, each of at most `SPARE_BUFFER_MAX`
/// bytes: a 100-client turn reuses them all; beyond that a connection allocates its own.
const SPARE_BUFFERS: usize = 256;
const SPARE_BUFFER_MAX: usize = 4096;

/// Why a connection must be closed after writing its queued output.
pub enum Flushed {
    /// It was closing and everything is written.
    Done,
    /// The write failed: close it now.
    Failed(io::Error),
}

impl Default for Conns {
    fn default() -> Self {
        Conns {
            slab: Slab::new(),
            next_gen: 0,
            dirty: Vec::new(),
            held: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            scratch_owner: None,
            encoded: Vec::new(),
            spare: Vec::new(),
        }
    }
}

/// The connection `id` names, if it is still that one (its slot may have been reused).
/// A free function, so that a caller can hold it and another field of `Conns` at once.
fn live(slab: &mut Slab<Conn>, id: ConnId) -> Option<&mut Conn> {
    slab.get_mut(id.slot as usize).filter(|c| c.gen == id.gen)
}

impl Conns {
    /// Open connections, dialed ones included.
    pub fn open(&self) -> usize {
        self.slab.len()
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        live(&mut self.slab, id)
    }

    /// The handle of the connection behind a mio token.
    pub fn id_of(&self, token: Token) -> Option<ConnId> {
        self.slab.get(token.0).map(|c| ConnId {
            slot: token.0 as u32,
            gen: c.gen,
        })
    }

    /// Registers `stream` with the loop and keeps it.
    pub fn insert(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        addr: SocketAddr,
        expect: Expect,
        outbuf_limit: usize,
    ) -> io::Result<ConnId> {
        let _ = stream.set_nodelay(true);
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1);
        let entry = self.slab.vacant_entry();
        let slot = entry.key();
        registry.register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn::new(stream, addr, gen, expect, outbuf_limit));
        Ok(ConnId {
            slot: slot as u32,
            gen,
        })
    }

    /// Starts a non-blocking connect; the connection is `connecting` until writable.
    pub fn dial(
        &mut self,
        registry: &Registry,
        addr: SocketAddr,
        expect: Expect,
        outbuf_limit: usize,
    ) -> io::Result<ConnId> {
        let stream = TcpStream::connect(addr)?;
        let id = self.insert(registry, stream, addr, expect, outbuf_limit)?;
        if let Some(conn) = self.get_mut(id) {
            conn.connecting = true;
        }
        Ok(id)
    }

    pub fn expect_of(&self, id: ConnId) -> Option<Expect> {
        self.slab
            .get(id.slot as usize)
            .filter(|c| c.gen == id.gen)
            .map(|c| c.expect)
    }

    /// The connections that carry what `expect` names.
    pub fn ids_expecting(&self, expect: Expect) -> Vec<ConnId> {
        self.slab
            .iter()
            .filter(|(_, c)| c.expect == expect)
            .map(|(slot, c)| ConnId {
                slot: slot as u32,
                gen: c.gen,
            })
            .collect()
    }

    /// Moves the connection from the main poll `main` to `side` (a server's
    /// `client_poll`), unless it is there already.
    pub fn move_to_side_poll(
        &mut self,
        id: ConnId,
        main: &Registry,
        side: &Registry,
    ) -> io::Result<()> {
        let Some(conn) = self.get_mut(id).filter(|c| !c.in_client_poll) else {
            return Ok(());
        };
        main.deregister(&mut conn.stream)?;
        side.register(
            &mut conn.stream,
            Token(id.slot as usize),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conn.in_client_poll = true;
        Ok(())
    }

    pub fn in_side_poll(&self, id: ConnId) -> bool {
        self.slab
            .get(id.slot as usize)
            .is_some_and(|c| c.gen == id.gen && c.in_client_poll)
    }

    pub fn remove(&mut self, registry: &Registry, id: ConnId) -> Option<Conn> {
        self.get_mut(id)?;
        let mut conn = self.slab.remove(id.slot as usize);
        let _ = registry.deregister(&mut conn.stream);
        Some(conn)
    }

    /// Encodes `msg` into the connection's output, to be written at the end of the turn.
    /// An error means the connection must be closed (its reader is too slow, or the
    /// message cannot be encoded); a gone connection is not an error.
    pub fn queue<T: Wire>(&mut self, id: ConnId, msg: &T) -> Result<(), QueueError> {
        let Some(conn) = live(&mut self.slab, id) else {
            return Ok(());
        };
        conn.lend_buffer_if_none(&mut self.spare);
        conn.queue(msg)?;
        self.dirty.push(id);
        Ok(())
    }

    /// Encodes `msg` once and queues it on each of `ids`; returns the connections that
    /// must be closed, with why (as [`Conns::queue`]). On connections where `may_wait`
    /// holds, it is held (see `held`) until about [`HELD_OUTPUT_LIMIT`] bytes are waiting.
    pub fn queue_to_all<T: Wire>(
        &mut self,
        ids: &[ConnId],
        msg: &T,
        may_wait: impl Fn(ConnId) -> bool,
    ) -> Vec<(ConnId, QueueError)> {
        let mut failed = Vec::new();
        self.encoded.clear();
        if let Err(e) = crate::proto::codec::encode_frame(msg, &mut self.encoded) {
            let e = QueueError::Encode(e);
            return ids.iter().map(|&id| (id, e.clone())).collect();
        }
        for &id in ids {
            let Some(conn) = live(&mut self.slab, id) else {
                continue;
            };
            conn.lend_buffer_if_none(&mut self.spare);
            let was_idle = conn.queued() == 0;
            match conn.queue_encoded(&self.encoded) {
                // Output already queued is in `held` or `dirty`; this joins it.
                Ok(()) if may_wait(id) && conn.queued() < HELD_OUTPUT_LIMIT => {
                    if was_idle {
                        self.held.push(id);
                    }
                }
                Ok(()) => self.dirty.push(id),
                Err(e) => failed.push((id, e)),
            }
        }
        if self.encoded.capacity() > 64 * 1024 {
            self.encoded = Vec::new();
        }
        failed
    }

    /// The loop woke for a timer alone: it is not busy, and the spare write buffers a
    /// busy stretch left (up to `SPARE_BUFFERS × SPARE_BUFFER_MAX`) go back.
    pub fn drop_spare_buffers(&mut self) {
        self.spare = Vec::new();
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Held output is due: it is written at the end of this turn.
    pub fn release_held(&mut self) {
        self.dirty.append(&mut self.held);
    }

    /// Closes the connection once what is queued for it is written.
    pub fn close_after_flush(&mut self, id: ConnId) -> Option<SocketAddr> {
        let conn = self.get_mut(id)?;
        conn.closing = true;
        let addr = conn.addr;
        self.dirty.push(id);
        Some(addr)
    }

    pub fn mark_writable(&mut self, id: ConnId) {
        self.dirty.push(id);
    }

    /// One `read` on the connection through the shared scratch buffer; `peer_closed`:
    /// the readiness event reported a hang-up or error too.
    pub fn fill(&mut self, id: ConnId, peer_closed: bool) -> Option<io::Result<Fill>> {
        if let Some(owner) = self.scratch_owner.take() {
            if let Some(conn) = self.slab.get_mut(owner.slot as usize) {
                if conn.gen == owner.gen {
                    conn.keep_fresh(&self.scratch);
                }
            }
        }
        let conn = live(&mut self.slab, id)?;
        self.scratch_owner = Some(id);
        Some(conn.fill(&mut self.scratch, peer_closed))
    }

    /// The connection, with the scratch buffer its newest bytes were read into (for
    /// [`Conn::next_frame`]).
    pub fn with_scratch(&mut self, id: ConnId) -> Option<(&mut Conn, &[u8])> {
        let conn = live(&mut self.slab, id)?;
        Some((conn, &self.scratch))
    }

    /// Asks for the connection's id in `drained` of [`Conns::flush_dirty`] once its
    /// output is all written.
    pub fn notify_when_drained(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            conn.notify_drained = true;
            self.dirty.push(id);
        }
    }

    /// Writes every connection that has output, once; returns those to close now (the
    /// caller removes them and tells their core). Connections that asked and are now
    /// fully written are added to `drained`.
    pub fn flush_dirty(&mut self, drained: &mut Vec<ConnId>) -> Vec<(ConnId, Flushed)> {
        self.flush_dirty_upto(drained, usize::MAX)
    }

    /// [`Conns::flush_dirty`] for at most `budget` connections, peer links first; the rest
    /// stay dirty (see [`Conns::has_dirty`]).
    pub fn flush_dirty_upto(
        &mut self,
        drained: &mut Vec<ConnId>,
        budget: usize,
    ) -> Vec<(ConnId, Flushed)> {
        let mut dirty = std::mem::take(&mut self.dirty);
        // Peer links first: a heartbeat or `Commit` queued in the middle of a long flush
        // (see `server::WORK_BETWEEN_TIMER_LOOKS`) must not wait behind every client.
        let peer = |id: ConnId| self.expect_of(id) == Some(Expect::PeerMsgs);
        dirty.sort_unstable_by_key(|&id| (!peer(id), id));
        dirty.dedup();
        let later = dirty.split_off(budget.min(dirty.len()));
        let mut ended = Vec::new();
        for id in dirty.drain(..) {
            let Some(conn) = live(&mut self.slab, id) else {
                continue;
            };
            if conn.connecting {
                continue;
            }
            let flushed = conn.flush();
            if let Some(buf) = conn.take_spent_buffer(KEEP_BUFFER) {
                if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_BUFFER_MAX {
                    self.spare.push(buf);
                }
            }
            match flushed {
                Err(e) => ended.push((id, Flushed::Failed(e))),
                Ok(()) if conn.closing && !conn.has_output() => ended.push((id, Flushed::Done)),
                Ok(()) if conn.notify_drained && !conn.has_output() => {
                    conn.notify_drained = false;
                    drained.push(id);
                }
                Ok(()) => {}
            }
        }
        dirty.extend(later);
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
        ended
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::frame;
    use crate::proto::{Seq, ServerMsg, Tally, View};
    use mio::Poll;
    use std::io::Write;

    fn results(first: u64) -> ServerMsg {
        ServerMsg::Results {
            view: View(1),
            first: Seq(first),
            tallies: vec![Tally { yes: 3, no: 4 }; 5],
        }
    }

    /// Reads a connection until its bytes are gone, returning the frames it decoded.
    fn read_all(conns: &mut Conns, id: ConnId) -> Vec<ServerMsg> {
        let mut got = Vec::new();
        loop {
            let fill = conns.fill(id, false).expect("conn").expect("read");
            let (conn, scratch) = conns.with_scratch(id).expect("conn");
            while let Some(msg) = conn.next_frame::<ServerMsg>(scratch).expect("decodes") {
                got.push(msg);
            }
            if matches!(fill, Fill::Drained) {
                return got;
            }
        }
    }

    /// `n` loopback connections, each held in `conns` (the accepted end) with the dialed
    /// end returned beside its id.
    fn linked(conns: &mut Conns, poll: &Poll, n: usize) -> Vec<(ConnId, std::net::TcpStream)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        (0..n)
            .map(|_| {
                let far = std::net::TcpStream::connect(addr).expect("connect");
                let (near, peer) = listener.accept().expect("accept");
                near.set_nonblocking(true).expect("nonblocking");
                let stream = TcpStream::from_std(near);
                let id = conns
                    .insert(poll.registry(), stream, peer, Expect::ServerMsgs, 1 << 20)
                    .expect("insert");
                (id, far)
            })
            .collect()
    }

    /// A reader that stops reading fills its connection's output buffer (after the
    /// kernel's): past the limit, queueing to it fails with the limit named, and the
    /// server closes it; a neighbour that reads is untouched. (Redis'
    /// client-output-buffer-limit; the client reconnects and catches up from its log.)
    #[test]
    fn a_reader_that_stops_reading_is_cut_at_its_limit_and_no_one_else() {
        let poll = Poll::new().expect("poll");
        let mut conns = Conns::default();
        let mut pair = linked(&mut conns, &poll, 2);
        let (reading, mut far) = pair.remove(1);
        let (stalled, _never_read) = pair.remove(0);
        far.set_nonblocking(true).expect("nonblocking");
        let mut sink = vec![0u8; 1 << 16];
        let mut cut = None;
        for round in 0..1_000_000u64 {
            let failed = conns.queue_to_all(&[stalled, reading], &results(round), |_| false);
            if let Some((id, e)) = failed.into_iter().next() {
                cut = Some((id, e.to_string()));
                break;
            }
            let ended = conns.flush_dirty(&mut Vec::new());
            assert!(ended.is_empty(), "a write failed before the limit");
            while std::io::Read::read(&mut far, &mut sink).is_ok_and(|n| n > 0) {}
        }
        let (id, why) = cut.expect("the stalled reader was never cut");
        assert_eq!(id, stalled);
        assert!(why.contains("over its limit of 1048576"), "{why}");
        assert!(conns.queue(reading, &results(0)).is_ok());
    }

    /// Frames decode straight from the shared scratch buffer; a frame cut short must
    /// survive another connection's read into that buffer before its rest arrives.
    #[test]
    fn a_frame_cut_short_survives_another_connections_read() {
        let poll = Poll::new().expect("poll");
        let mut conns = Conns::default();
        let (ids, mut writers): (Vec<_>, Vec<_>) = linked(&mut conns, &poll, 2).into_iter().unzip();
        let a = [
            frame(&results(1)).expect("encode"),
            frame(&results(6)).expect("encode"),
        ]
        .concat();
        let b = frame(&results(100)).expect("encode");
        let cut = a.len() - 7;
        // A's first frame whole and the start of its second; then B's frame; then A's rest.
        let mut poll = poll;
        let mut wait_readable = |id: ConnId| {
            let mut events = mio::Events::with_capacity(8);
            loop {
                poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
                    .expect("poll");
                assert!(!events.is_empty(), "nothing to read within 5 s");
                if events.iter().any(|e| e.token().0 == id.slot as usize) {
                    return;
                }
            }
        };
        writers[0].write_all(&a[..cut]).expect("write");
        wait_readable(ids[0]);
        assert_eq!(read_all(&mut conns, ids[0]), vec![results(1)]);
        assert!(conns.get_mut(ids[0]).expect("conn").unread() > 0);
        writers[1].write_all(&b).expect("write");
        wait_readable(ids[1]);
        assert_eq!(read_all(&mut conns, ids[1]), vec![results(100)]);
        writers[0].write_all(&a[cut..]).expect("write");
        wait_readable(ids[0]);
        assert_eq!(read_all(&mut conns, ids[0]), vec![results(6)]);
        assert_eq!(conns.get_mut(ids[0]).expect("conn").unread(), 0);

        // A frame several times the scratch buffer: reads that fill it (`Fill::More`),
        // written as fast as the socket takes it, then a small frame behind it.
        let big = ServerMsg::Results {
            view: View(1),
            first: Seq(1000),
            tallies: vec![Tally { yes: 1, no: 2 }; 3 * READ_CHUNK / 8],
        };
        let bytes = [frame(&big).expect("encode"), b.clone()].concat();
        assert!(bytes.len() > 2 * READ_CHUNK);
        writers[0].set_nonblocking(true).expect("nonblocking");
        let (mut sent, mut got) = (0, Vec::new());
        while got.len() < 2 {
            match writers[0].write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
            wait_readable(ids[0]);
            got.extend(read_all(&mut conns, ids[0]));
        }
        assert_eq!(got, vec![big, results(100)]);
    }
    /// Held output is written only when released, when something urgent is queued
    /// behind it (in order), or once it reaches the limit.
    #[test]
    fn held_output_waits_for_release_urgent_output_or_the_limit() {
        let poll = Poll::new().expect("poll");
        let mut conns = Conns::default();
        let (id, mut reader) = linked(&mut conns, &poll, 1).remove(0);
        reader
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut expect_bytes = |want: &[u8]| {
            let mut got = vec![0; want.len()];
            std::io::Read::read_exact(&mut reader, &mut got).expect("read");
            assert_eq!(got, want);
            reader.set_nonblocking(true).expect("nonblocking");
            let mut more = [0; 1];
            let after = std::io::Read::read(&mut reader, &mut more);
            assert!(
                matches!(&after, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "more was written: {after:?}"
            );
            reader.set_nonblocking(false).expect("blocking");
        };
        let held = |conns: &mut Conns, first| {
            assert!(conns
                .queue_to_all(&[id], &results(first), |_| true)
                .is_empty());
        };
        let bytes = |first| frame(&results(first)).expect("encode");

        held(&mut conns, 1);
        held(&mut conns, 6);
        assert!(conns.has_held());
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        expect_bytes(&[]);
        conns.queue(id, &results(11)).expect("queue");
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        expect_bytes(&[bytes(1), bytes(6), bytes(11)].concat());

        held(&mut conns, 16);
        conns.release_held();
        assert!(!conns.has_held());
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        expect_bytes(&bytes(16));

        let mut sent = Vec::new();
        while sent.len() < HELD_OUTPUT_LIMIT {
            held(&mut conns, 21);
            sent.extend(bytes(21));
        }
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        expect_bytes(&sent);
    }

    /// A flush in batches writes the peer link first, whatever its slot, and leaves the
    /// rest dirty for the next batch: a heartbeat queued in the middle of a long flush
    /// leaves before the clients still waiting.
    #[test]
    fn a_flush_in_batches_writes_the_peer_link_first() {
        let poll = Poll::new().expect("poll");
        let mut conns = Conns::default();
        let mut links = linked(&mut conns, &poll, 3);
        let peer = links[2].0;
        conns.get_mut(peer).expect("conn").expect = Expect::PeerMsgs;
        for far in &links {
            far.1.set_nonblocking(true).expect("nonblocking");
        }
        let ids: Vec<ConnId> = links.iter().map(|(id, _)| *id).collect();
        assert!(conns.queue_to_all(&ids, &results(1), |_| false).is_empty());
        let mut got_bytes = |i: usize| {
            let mut buf = [0u8; 4096];
            match std::io::Read::read(&mut links[i].1, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("read: {e}"),
            }
        };

        assert!(conns.flush_dirty_upto(&mut Vec::new(), 1).is_empty());
        assert!(got_bytes(2) > 0, "the peer link was not written first");
        assert_eq!((got_bytes(0), got_bytes(1)), (0, 0), "past the budget");
        assert!(conns.has_dirty());

        assert!(conns.flush_dirty_upto(&mut Vec::new(), 2).is_empty());
        assert!(
            got_bytes(0) > 0 && got_bytes(1) > 0,
            "the rest were not written"
        );
        assert!(!conns.has_dirty());
    }

    /// A write buffer above `KEEP_BUFFER` goes back to the spares once written and is
    /// lent to the next connection that queues; a small one stays with its connection.
    #[test]
    fn spent_write_buffers_are_lent_again() {
        let poll = Poll::new().expect("poll");
        let mut conns = Conns::default();
        // The far ends stay open (and unread) for the test's length.
        let (ids, _far): (Vec<_>, Vec<_>) = linked(&mut conns, &poll, 2).into_iter().unzip();
        let big = ServerMsg::Results {
            view: View(1),
            first: Seq(1),
            tallies: vec![Tally { yes: 1, no: 2 }; KEEP_BUFFER],
        };
        conns.queue(ids[0], &big).expect("queue");
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        assert_eq!(conns.spare.len(), 1);
        conns.queue(ids[1], &results(1)).expect("queue");
        assert!(conns.spare.is_empty(), "the spare buffer was not lent");
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        assert_eq!(conns.spare.len(), 1, "the lent buffer did not come back");
        conns.queue(ids[0], &results(1)).expect("queue");
        conns.queue(ids[1], &results(6)).expect("queue");
        assert!(conns.flush_dirty(&mut Vec::new()).is_empty());
        assert_eq!(
            conns.spare.len(),
            1,
            "a buffer within KEEP_BUFFER left its conn"
        );
    }
}
