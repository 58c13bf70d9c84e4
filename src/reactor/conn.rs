//! One TCP connection: its socket, read and write buffers, and where it is in its life.
//! Edge-triggered discipline (mio's tcp_server example): read until `WouldBlock` or a short
//! read, write until the buffer drains or `WouldBlock`.

use crate::proto::codec::{self, DecodeError, EncodeError, Wire};
use crate::proto::limits::MAX_FRAME_LEN;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

/// Bytes asked of the kernel per `read`, into the loop's one scratch buffer.
pub const READ_CHUNK: usize = 64 * 1024;

/// What the bytes read on a connection should decode as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A server's accepted connection before its first frame.
    Hello,
    /// A server's client link.
    ClientMsgs,
    /// Either end of a peer link.
    PeerMsgs,
    /// A client's link to a server.
    ServerMsgs,
    /// A status link: we only answer, any frame is an error.
    Nothing,
}

pub struct Conn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub gen: u32,
    /// Which core the connection belongs to, where a loop hosts several (the bench).
    pub owner: usize,
    pub expect: Expect,
    /// A dial still waiting for the handshake to finish.
    pub connecting: bool,
    /// Close as soon as the write buffer drains.
    pub closing: bool,
    /// Tell the core once the write buffer drains.
    pub notify_drained: bool,
    /// Registered with a server's `client_poll` (read in batches while it is a backup),
    /// not with its main poll.
    pub in_client_poll: bool,
    /// Bytes of a frame cut short by the end of a read, kept until the rest arrives.
    /// Empty (and unallocated) otherwise: whole frames decode straight from the scratch.
    rbuf: Vec<u8>,
    rpos: usize,
    /// `scratch[fresh.0..fresh.1]`: the newest read, not yet decoded. Valid only until the
    /// next read of any connection, which is why `Conns::fill` first moves what is left of
    /// it to `rbuf`.
    fresh: (usize, usize),
    wbuf: Vec<u8>,
    wpos: usize,
    outbuf_limit: usize,
}

#[derive(Debug)]
pub enum Fill {
    /// Read some bytes; call again.
    More,
    /// Nothing more to read now (possibly after reading some bytes).
    Drained,
    /// The peer closed its side.
    Eof,
}

#[derive(Clone, Debug)]
pub enum QueueError {
    /// The peer does not read fast enough (Redis' client-output-buffer-limit).
    OutbufFull {
        queued: usize,
        limit: usize,
    },
    Encode(EncodeError),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::OutbufFull { queued, limit } => {
                write!(
                    f,
                    "output buffer of {queued} bytes over its limit of {limit}"
                )
            }
            QueueError::Encode(e) => write!(f, "{e}"),
        }
    }
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        addr: SocketAddr,
        gen: u32,
        expect: Expect,
        outbuf_limit: usize,
    ) -> Conn {
        Conn {
            stream,
            addr,
            gen,
            owner: 0,
            expect,
            connecting: false,
            closing: false,
            notify_drained: false,
            in_client_poll: false,
            rbuf: Vec::new(),
            rpos: 0,
            fresh: (0, 0),
            wbuf: Vec::new(),
            wpos: 0,
            outbuf_limit,
        }
    }

    /// One `read` into the loop's `scratch` buffer (shared by every connection). Frames are
    /// decoded from there ([`Conn::next_frame`]); only a frame cut short is copied here.
    /// The caller decodes what arrived before reading again, so a flood never buffers more
    /// than one maximal frame plus a chunk.
    ///
    /// A read shorter than the scratch buffer emptied the socket (epoll(7), "for
    /// stream-oriented files ... read(2) returns a lower number of bytes"), so it ends the
    /// turn's reading without the extra `read` that would only say `EAGAIN`: that saves
    /// one syscall per readable socket per turn. Unless `peer_closed` (the event also
    /// reported a hang-up or error): then we read on to the EOF that follows the data, as
    /// no later edge would report it.
    pub fn fill(&mut self, scratch: &mut [u8], peer_closed: bool) -> io::Result<Fill> {
        debug_assert_eq!(
            self.fresh.0, self.fresh.1,
            "keep_fresh before reading again"
        );
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        } else if self.rpos > MAX_FRAME_LEN / 4 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    if self.closing {
                        // Nothing read on a closing connection is acted on; keeping it
                        // would let the peer grow our memory until the close.
                        self.rbuf = Vec::new();
                        self.rpos = 0;
                    } else if self.rbuf.len() > self.rpos {
                        // The rest of a frame cut short: it must join its start.
                        self.rbuf.extend_from_slice(&scratch[..n]);
                    } else {
                        self.fresh = (0, n);
                    }
                    return Ok(if n < scratch.len() && !peer_closed {
                        Fill::Drained
                    } else {
                        Fill::More
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Drained),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves the undecoded end of the newest read out of the shared scratch, before the
    /// next read of any connection overwrites it.
    pub fn keep_fresh(&mut self, scratch: &[u8]) {
        let (start, end) = std::mem::take(&mut self.fresh);
        if start < end {
            self.rbuf.extend_from_slice(&scratch[start..end]);
        }
    }

    /// The next complete frame read, if any. `scratch` is the loop's, as given to the
    /// last [`Conn::fill`] of this connection.
    pub fn next_frame<T: Wire>(&mut self, scratch: &[u8]) -> Result<Option<T>, DecodeError> {
        let (start, end) = self.fresh;
        if start == end {
            return Ok(match codec::decode_frame::<T>(&self.rbuf[self.rpos..])? {
                Some((msg, used)) => {
                    self.rpos += used;
                    Some(msg)
                }
                None => None,
            });
        }
        match codec::decode_frame::<T>(&scratch[start..end])? {
            Some((msg, used)) => {
                self.fresh.0 += used;
                Ok(Some(msg))
            }
            None => {
                self.keep_fresh(scratch);
                Ok(None)
            }
        }
    }

    /// Bytes read and not yet decoded (a frame cut short by EOF shows here).
    pub fn unread(&self) -> usize {
        self.rbuf.len() - self.rpos + (self.fresh.1 - self.fresh.0)
    }

    pub fn queue<T: Wire>(&mut self, msg: &T) -> Result<(), QueueError> {
        self.check_room()?;
        codec::encode_frame(msg, &mut self.wbuf).map_err(QueueError::Encode)
    }

    /// Queues frames already encoded (a message sent to many connections, encoded once).
    pub fn queue_encoded(&mut self, frames: &[u8]) -> Result<(), QueueError> {
        self.check_room()?;
        self.wbuf.extend_from_slice(frames);
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn check_room(&self) -> Result<(), QueueError> {
        let queued = self.queued();
        if queued > self.outbuf_limit {
            return Err(QueueError::OutbufFull {
                queued,
                limit: self.outbuf_limit,
            });
        }
        Ok(())
    }

    /// A server learns from the first frame that a connection is a peer link, which
    /// carries snapshots and so may queue more.
    pub fn set_outbuf_limit(&mut self, limit: usize) {
        self.outbuf_limit = limit;
    }

    /// The write buffer, if all of it is written and it is larger than `keep` bytes (see
    /// `Conns::spare`).
    pub fn take_spent_buffer(&mut self, keep: usize) -> Option<Vec<u8>> {
        if self.wbuf.capacity() <= keep || self.has_output() {
            return None;
        }
        self.wpos = 0;
        Some(std::mem::take(&mut self.wbuf))
    }

    /// Gives a connection without a write buffer an empty one to queue into.
    pub fn lend_buffer_if_none(&mut self, spare: &mut Vec<Vec<u8>>) {
        if self.wbuf.capacity() == 0 {
            if let Some(mut buf) = spare.pop() {
                buf.clear();
                self.wbuf = buf;
                self.wpos = 0;
            }
        }
    }

    pub fn has_output(&self) -> bool {
        self.queued() > 0
    }

    /// Writes until the buffer drains or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 64 * 1024 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// A dialed connection finished its handshake: `Ok(true)` up, `Ok(false)` not yet.
    pub fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connecting = false;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}
