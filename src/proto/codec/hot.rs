//! Hand-written CBOR for the messages every ballot carries (`VoteRequest`, `Results`,
//! `Votes`, `Forward`, `Commit`, `CommitAck`), byte for byte what serde_cbor writes for
//! them. serde_cbor decodes through a generic, per-type visitor that compares every field
//! name as a string; at window 16 that was a tenth of the bench's CPU (`perf record`).
//!
//! The decoder accepts only the bytes the encoder writes (fields in declaration order, every
//! length and number in its shortest form, no tags, no indefinite lengths) and says `None`
//! to anything else, which then goes to serde_cbor: that one decides what is valid and
//! words the errors. What this decoder accepts is serde_cbor's own encoding of the message,
//! so the two paths can never disagree on it (`tests/codec.rs` checks both directions).

use crate::proto::{ClientMsg, PeerMsg, Seq, ServerMsg, Tally, View};

const UINT: u8 = 0;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
/// Items reserved before reading a list (a window's worth of ballots, many times over).
const MAX_RESERVE: usize = 1024;

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `{variant: {field: ..., ...}}`: the start of an externally tagged struct variant.
fn variant(out: &mut Vec<u8>, name: &str, fields: u64) {
    head(out, MAP, 1);
    text(out, name);
    head(out, MAP, fields);
}

fn uint_field(out: &mut Vec<u8>, name: &str, n: u64) {
    text(out, name);
    head(out, UINT, n);
}

/// A field holding a list: its name, then the head of an array of `len` items.
fn list_field(out: &mut Vec<u8>, name: &str, len: usize) {
    text(out, name);
    head(out, ARRAY, len as u64);
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { TRUE } else { FALSE });
}

fn tally(out: &mut Vec<u8>, t: &Tally) {
    head(out, MAP, 2);
    uint_field(out, "yes", u64::from(t.yes));
    uint_field(out, "no", u64::from(t.no));
}

pub fn encode_server(msg: &ServerMsg, out: &mut Vec<u8>) -> bool {
    match msg {
        ServerMsg::VoteRequest { view, first, count } => {
            variant(out, "VoteRequest", 3);
            uint_field(out, "view", view.0);
            uint_field(out, "first", first.0);
            uint_field(out, "count", u64::from(*count));
        }
        ServerMsg::Results {
            view,
            first,
            tallies,
        } => {
            variant(out, "Results", 3);
            uint_field(out, "view", view.0);
            uint_field(out, "first", first.0);
            list_field(out, "tallies", tallies.len());
            for t in tallies {
                tally(out, t);
            }
        }
        ServerMsg::Welcome { .. }
        | ServerMsg::NewView { .. }
        | ServerMsg::Propose { .. }
        | ServerMsg::Lease { .. }
        | ServerMsg::Refused { .. }
        | ServerMsg::Left { .. } => return false,
    }
    true
}

pub fn encode_client(msg: &ClientMsg, out: &mut Vec<u8>) -> bool {
    match msg {
        ClientMsg::Votes { view, votes } => {
            variant(out, "Votes", 2);
            uint_field(out, "view", view.0);
            list_field(out, "votes", votes.len());
            for (seq, yes) in votes {
                head(out, ARRAY, 2);
                head(out, UINT, seq.0);
                boolean(out, *yes);
            }
        }
        ClientMsg::Resend { .. }
        | ClientMsg::Accept { .. }
        | ClientMsg::Reject { .. }
        | ClientMsg::Stale { .. }
        | ClientMsg::LeaseAck { .. }
        | ClientMsg::Leave { .. } => return false,
    }
    true
}

pub fn encode_peer(msg: &PeerMsg, out: &mut Vec<u8>) -> bool {
    match msg {
        PeerMsg::Forward { view, votes } => {
            variant(out, "Forward", 2);
            uint_field(out, "view", view.0);
            list_field(out, "votes", votes.len());
            for (seq, client, yes) in votes {
                head(out, ARRAY, 3);
                head(out, UINT, seq.0);
                head(out, UINT, u64::from(*client));
                boolean(out, *yes);
            }
        }
        PeerMsg::Commit {
            view,
            seq,
            tally: t,
        } => {
            variant(out, "Commit", 3);
            uint_field(out, "view", view.0);
            uint_field(out, "seq", seq.0);
            text(out, "tally");
            tally(out, t);
        }
        PeerMsg::CommitAck { view, seq } => {
            variant(out, "CommitAck", 2);
            uint_field(out, "view", view.0);
            uint_field(out, "seq", seq.0);
        }
        PeerMsg::Snapshot(_)
        | PeerMsg::Install { .. }
        | PeerMsg::InstallAck { .. }
        | PeerMsg::Heartbeat { .. }
        | PeerMsg::Register { .. }
        | PeerMsg::Open { .. }
        | PeerMsg::JoinRefused { .. }
        | PeerMsg::Fence { .. } => return false,
    }
    true
}

/// Reads the form [`head`] and friends write. Every method says `None` on anything else.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(..n)?;
        self.buf = &self.buf[n..];
        Some(bytes)
    }

    fn head(&mut self, major: u8) -> Option<u64> {
        let b = self.byte()?;
        if b >> 5 != major {
            return None;
        }
        // Each width only for what does not fit the one below: the shortest form. (serde_cbor
        // reads an enum only from a map head of exactly one byte, for instance.)
        let (n, shortest_above) = match b & 0x1f {
            n @ 0..=23 => return Some(u64::from(n)),
            24 => (u64::from(self.byte()?), 23),
            25 => (
                u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
                0xff,
            ),
            26 => (
                u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
                0xffff,
            ),
            27 => (
                u64::from_be_bytes(self.take(8)?.try_into().ok()?),
                0xffff_ffff,
            ),
            _ => return None,
        };
        (n > shortest_above).then_some(n)
    }

    fn uint(&mut self) -> Option<u64> {
        self.head(UINT)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint()?).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.byte()? {
            TRUE => Some(true),
            FALSE => Some(false),
            _ => None,
        }
    }

    fn text(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.head(TEXT)?).ok()?;
        self.take(len)
    }

    /// One byte that must be `b`.
    fn byte_is(&mut self, b: u8) -> Option<()> {
        (self.byte()? == b).then_some(())
    }

    /// A field name. All of ours are under 24 bytes, so the head is the one byte before.
    fn key(&mut self, name: &str) -> Option<()> {
        let len = name.len();
        debug_assert!(len < 24);
        let (&head, rest) = self.buf.split_first()?;
        if head != TEXT << 5 | len as u8 || rest.get(..len)? != name.as_bytes() {
            return None;
        }
        self.buf = &rest[len..];
        Some(())
    }

    /// A map head of fewer than 24 entries: one byte.
    fn map(&mut self, fields: u8) -> Option<()> {
        debug_assert!(fields < 24);
        self.byte_is(MAP << 5 | fields)
    }

    fn uint_field(&mut self, name: &str) -> Option<u64> {
        self.key(name)?;
        self.uint()
    }

    /// An array header, its length bounded by the bytes left (each item takes at least
    /// one), so a hostile length cannot make us allocate.
    fn array(&mut self) -> Option<usize> {
        let len = usize::try_from(self.head(ARRAY)?).ok()?;
        (len <= self.buf.len()).then_some(len)
    }

    /// A field holding a list, its items read by `item`.
    fn list_field<T>(
        &mut self,
        name: &str,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.key(name)?;
        let len = self.array()?;
        // A hostile length reserves no more than this up front; a real one grows past it.
        let mut items = Vec::with_capacity(len.min(MAX_RESERVE));
        for _ in 0..len {
            items.push(item(self)?);
        }
        Some(items)
    }

    fn tally(&mut self) -> Option<Tally> {
        self.map(2)?;
        let yes = {
            self.key("yes")?;
            self.u32()?
        };
        self.key("no")?;
        Some(Tally {
            yes,
            no: self.u32()?,
        })
    }

    /// `{name: {` with `fields` fields: the variant's name.
    fn variant(&mut self) -> Option<(&'a [u8], u64)> {
        self.map(1)?;
        let name = self.text()?;
        Some((name, self.head(MAP)?))
    }

    /// The whole body was one message.
    fn end<T>(&self, msg: T) -> Option<T> {
        self.buf.is_empty().then_some(msg)
    }
}

pub fn decode_server(body: &[u8]) -> Option<ServerMsg> {
    let mut r = Reader { buf: body };
    let msg = match r.variant()? {
        (b"VoteRequest", 3) => ServerMsg::VoteRequest {
            view: View(r.uint_field("view")?),
            first: Seq(r.uint_field("first")?),
            count: u32::try_from(r.uint_field("count")?).ok()?,
        },
        (b"Results", 3) => ServerMsg::Results {
            view: View(r.uint_field("view")?),
            first: Seq(r.uint_field("first")?),
            tallies: r.list_field("tallies", Reader::tally)?,
        },
        _ => return None,
    };
    r.end(msg)
}

pub fn decode_client(body: &[u8]) -> Option<ClientMsg> {
    let mut r = Reader { buf: body };
    let msg = match r.variant()? {
        (b"Votes", 2) => ClientMsg::Votes {
            view: View(r.uint_field("view")?),
            votes: r.list_field("votes", |r| {
                r.byte_is(ARRAY << 5 | 2)?;
                Some((Seq(r.uint()?), r.boolean()?))
            })?,
        },
        _ => return None,
    };
    r.end(msg)
}

pub fn decode_peer(body: &[u8]) -> Option<PeerMsg> {
    let mut r = Reader { buf: body };
    let msg = match r.variant()? {
        (b"Forward", 2) => PeerMsg::Forward {
            view: View(r.uint_field("view")?),
            votes: r.list_field("votes", |r| {
                r.byte_is(ARRAY << 5 | 3)?;
                Some((Seq(r.uint()?), r.u32()?, r.boolean()?))
            })?,
        },
        (b"Commit", 3) => PeerMsg::Commit {
            view: View(r.uint_field("view")?),
            seq: Seq(r.uint_field("seq")?),
            tally: {
                r.key("tally")?;
                r.tally()?
            },
        },
        (b"CommitAck", 2) => PeerMsg::CommitAck {
            view: View(r.uint_field("view")?),
            seq: Seq(r.uint_field("seq")?),
        },
        _ => return None,
    };
    r.end(msg)
}
