//! `pbvote decode FILE`: the frames of a packet capture (pcap or pcapng, as `tcpdump -w`
//! and `tshark -w` write them), one line each, through the project's own codec.
//!
//! Each TCP direction is put back in sequence order (segments out of order, repeated or
//! overlapping are what captures hold), then cut into frames. A connection's kind comes
//! from the `Hello` its dialer sent first; a connection whose start the capture missed is
//! decoded as whichever message kind fits. A frame that does not decode is printed with
//! the error, and decoding goes on after it (or, if its length prefix is itself bad, with
//! the next connection: that direction's framing is lost).

use crate::proto::codec::{decode_frame, frame_extent, DecodeError, Wire};
use crate::proto::limits::MAX_FRAME_LEN;
use crate::proto::{ClientMsg, Hello, LinkKind, PeerMsg, RemoveReply, ServerMsg, StatusReply};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Bytes held for one direction beyond a hole in its sequence (segments the capture has
/// after one it lost). Past it the hole is given up: that direction's framing is lost.
pub const MAX_REASSEMBLY_HELD: usize = 2 * MAX_FRAME_LEN;

/// One decoded (or undecodable) frame.
#[derive(Clone, Debug, Serialize)]
pub struct FrameLine {
    /// Capture time, since the Unix epoch.
    #[serde(serialize_with = "seconds")]
    pub time: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `client`, `server` (to a client), `peer`, `status`, `admin`, or `?` when the
    /// connection's hello is not in the capture.
    pub link: &'static str,
    pub frame: Decoded,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What a frame held.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoded {
    Hello(Hello),
    Client(ClientMsg),
    Server(ServerMsg),
    Peer(PeerMsg),
    Status(StatusReply),
    Remove(RemoveReply),
    /// It did not decode: why, and its length (`None`: the length prefix itself is bad,
    /// and the rest of this direction is skipped).
    Undecodable {
        error: String,
        len: Option<usize>,
    },
    /// The capture lost bytes of this direction; framing resumes at the next connection.
    Gap {
        missing_from: u64,
    },
}

impl fmt::Display for FrameLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} {:<6} ",
            crate::watch::time_of_day(self.time, 6),
            self.src,
            self.dst,
            self.link
        )?;
        match &self.frame {
            Decoded::Hello(m) => write!(f, "Hello::{m:?}"),
            Decoded::Client(m) => write!(f, "{m:?}"),
            Decoded::Server(m) => write!(f, "{m:?}"),
            Decoded::Peer(m) => write!(f, "{m:?}"),
            Decoded::Status(m) => write!(f, "{m:?}"),
            Decoded::Remove(m) => write!(f, "{m:?}"),
            Decoded::Undecodable { error, len } => match len {
                Some(len) => write!(f, "UNDECODABLE frame of {len} bytes: {error}"),
                None => write!(
                    f,
                    "UNDECODABLE: {error}; the rest of this direction is skipped"
                ),
            },
            Decoded::Gap { missing_from } => write!(
                f,
                "GAP: the capture lost this direction's bytes from offset {missing_from}; \
                 the rest of it is skipped"
            ),
        }
    }
}

/// What the capture held besides frames, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub packets: u64,
    pub frames: u64,
    pub undecodable: u64,
    /// Packets not TCP over IP, or on other link types: skipped.
    pub skipped: u64,
}

/// Reads the capture in `input` and calls `each` for every frame, in capture order of
/// the segment that completed it. `ports`: only connections with an end on one of them
/// (none: every TCP connection).
pub fn decode<R: Read>(
    input: R,
    ports: &[u16],
    mut each: impl FnMut(&FrameLine),
) -> Result<Summary, String> {
    let mut streams = Streams::default();
    let mut summary = Summary::default();
    let mut on_packet = |time: Duration, link: DataLink, data: &[u8]| {
        summary.packets += 1;
        let Some(segment) = tcp_segment(link, data) else {
            summary.skipped += 1;
            return;
        };
        let wanted = ports.is_empty()
            || ports.contains(&segment.src.port())
            || ports.contains(&segment.dst.port());
        if !wanted {
            summary.skipped += 1;
            return;
        }
        for line in streams.segment(time, segment) {
            summary.frames += 1;
            if matches!(
                line.frame,
                Decoded::Undecodable { .. } | Decoded::Gap { .. }
            ) {
                summary.undecodable += 1;
            }
            each(&line);
        }
    };
    let mut input = std::io::BufReader::new(input);
    let magic = {
        use std::io::BufRead;
        let head = input.fill_buf().map_err(|e| format!("read: {e}"))?;
        head.get(..4).map(|m| [m[0], m[1], m[2], m[3]])
    };
    // The section header block's type, the same in either byte order.
    if magic == Some([0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut reader = PcapNgReader::new(input).map_err(|e| format!("pcapng: {e}"))?;
        // Each interface's link type and timestamp resolution, in the order described.
        let mut interfaces: Vec<(DataLink, u8)> = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.map_err(|e| format!("pcapng: {e}"))? {
                Block::SectionHeader(_) => interfaces.clear(),
                Block::InterfaceDescription(i) => {
                    let resolution = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                        _ => None,
                    });
                    interfaces.push((i.linktype, resolution.unwrap_or(6)));
                }
                Block::EnhancedPacket(packet) => {
                    let Some(&(link, resolution)) = interfaces.get(packet.interface_id as usize)
                    else {
                        continue; // names no interface described: not a packet we can read
                    };
                    let time = pcapng_time(packet.timestamp, resolution);
                    on_packet(time, link, &packet.data);
                }
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(input).map_err(|e| format!("pcap: {e}"))?;
        let link = reader.header().datalink;
        while let Some(packet) = reader.next_packet() {
            let packet = packet.map_err(|e| format!("pcap: {e}"))?;
            on_packet(packet.timestamp, link, &packet.data);
        }
    }
    Ok(summary)
}

/// pcap-file reads a pcapng timestamp as a count of nanoseconds; it is a count of units
/// of `if_tsresol` (10^-6 s unless the interface says otherwise; high bit set: 2^-n).
fn pcapng_time(raw: Duration, resolution: u8) -> Duration {
    let units = raw.as_nanos();
    let per_second: u128 = if resolution & 0x80 != 0 {
        1u128 << (resolution & 0x7f).min(64)
    } else {
        10u128.pow(u32::from(resolution.min(19)))
    };
    let nanos = units * 1_000_000_000 / per_second.max(1);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

struct Segment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    syn: bool,
    payload: &'a [u8],
}

/// The TCP segment in a captured packet, if it is one.
fn tcp_segment(link: DataLink, data: &[u8]) -> Option<Segment<'_>> {
    let packet = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok()?,
        // A 20-byte header (protocol, interface, address) before the IP packet.
        DataLink::LINUX_SLL2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        // BSD loopback: a 4-byte address family first.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        _ => return None,
    };
    let (src, dst): (IpAddr, IpAddr) = match packet.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = packet.transport? else {
        return None;
    };
    Some(Segment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        payload: tcp.payload(),
    })
}

/// One direction of one connection.
#[derive(Default)]
struct Direction {
    /// The sequence number of offset 0 (the SYN's, or one before the first byte seen).
    isn: Option<u32>,
    /// The next offset wanted in order.
    next: u64,
    /// Segments past a hole, by offset.
    ahead: BTreeMap<u64, Vec<u8>>,
    ahead_len: usize,
    /// In-order bytes not yet cut into frames.
    buf: Vec<u8>,
    /// Framing is lost (a bad length prefix, or a hole given up): ignore the rest.
    lost: bool,
    /// Frames decoded so far (the first one from a dialer is its hello).
    frames: u64,
}

#[derive(Default)]
struct Streams {
    directions: HashMap<(SocketAddr, SocketAddr), Direction>,
    /// A connection's kind, by its dialer's end (from the hello).
    kinds: HashMap<(SocketAddr, SocketAddr), LinkKind>,
}

impl Streams {
    fn segment(&mut self, time: Duration, segment: Segment<'_>) -> Vec<FrameLine> {
        let key = (segment.src, segment.dst);
        if segment.syn {
            // A new connection on these ends: start over.
            let fresh = Direction {
                isn: Some(segment.seq),
                next: 1,
                ..Direction::default()
            };
            self.directions.insert(key, fresh);
            self.kinds.remove(&key);
            self.kinds.remove(&(segment.dst, segment.src));
        }
        let dir = self.directions.entry(key).or_default();
        if dir.lost || segment.payload.is_empty() {
            return Vec::new();
        }
        let isn = *dir.isn.get_or_insert(segment.seq.wrapping_sub(1));
        if dir.next == 0 {
            dir.next = 1;
        }
        let offset = u64::from(segment.seq.wrapping_sub(isn));
        let mut lines = Vec::new();
        if let Some(missing_from) = dir.take(offset, segment.payload) {
            lines.push(self.line(time, key, Decoded::Gap { missing_from }));
            return lines;
        }
        self.cut_frames(time, key, &mut lines);
        lines
    }

    fn line(&self, time: Duration, key: (SocketAddr, SocketAddr), frame: Decoded) -> FrameLine {
        FrameLine {
            time,
            src: key.0,
            dst: key.1,
            link: self.link_label(key),
            frame,
        }
    }

    fn link_label(&self, key: (SocketAddr, SocketAddr)) -> &'static str {
        match (self.kinds.get(&key), self.kinds.get(&(key.1, key.0))) {
            (Some(LinkKind::Client), _) => "client",
            (_, Some(LinkKind::Client)) => "server",
            (Some(LinkKind::Peer), _) | (_, Some(LinkKind::Peer)) => "peer",
            (Some(LinkKind::Status), _) | (_, Some(LinkKind::Status)) => "status",
            (Some(LinkKind::Admin), _) | (_, Some(LinkKind::Admin)) => "admin",
            (None, None) => "?",
        }
    }

    fn cut_frames(
        &mut self,
        time: Duration,
        key: (SocketAddr, SocketAddr),
        lines: &mut Vec<FrameLine>,
    ) {
        loop {
            let Some(dir) = self.directions.get(&key) else {
                return;
            };
            let Some(extent) = frame_extent(&dir.buf) else {
                return;
            };
            let decoded = match extent {
                Ok(len) if dir.buf.len() < len => return,
                Ok(len) => {
                    let decoded = self.decode_one(key, &dir.buf[..len], dir.frames);
                    let dir = self.directions.get_mut(&key).expect("looked up above");
                    dir.buf.drain(..len);
                    dir.frames += 1;
                    decoded.unwrap_or_else(|e| Decoded::Undecodable {
                        error: e.to_string(),
                        len: Some(len),
                    })
                }
                Err(e) => {
                    let dir = self.directions.get_mut(&key).expect("looked up above");
                    dir.lost = true;
                    dir.buf.clear();
                    Decoded::Undecodable {
                        error: e.to_string(),
                        len: None,
                    }
                }
            };
            if let Decoded::Hello(hello) = &decoded {
                self.kinds.insert(key, hello.link_kind());
            }
            lines.push(self.line(time, key, decoded));
        }
    }

    /// One whole frame, decoded as what this direction carries.
    fn decode_one(
        &self,
        key: (SocketAddr, SocketAddr),
        frame: &[u8],
        frames_before: u64,
    ) -> Result<Decoded, DecodeError> {
        let ours = self.kinds.get(&key).copied();
        let theirs = self.kinds.get(&(key.1, key.0)).copied();
        match (ours, theirs) {
            (Some(LinkKind::Client), _) => one(frame, Decoded::Client),
            (Some(LinkKind::Peer), _) | (None, Some(LinkKind::Peer)) => one(frame, Decoded::Peer),
            (None, Some(LinkKind::Client)) => one(frame, Decoded::Server),
            (None, Some(LinkKind::Status)) => one(frame, Decoded::Status),
            (None, Some(LinkKind::Admin)) => one(frame, Decoded::Remove),
            // A dialer's first frame is its hello.
            (None, None) if frames_before == 0 => {
                one(frame, Decoded::Hello).or_else(|_| guess(frame))
            }
            (Some(LinkKind::Status | LinkKind::Admin), _) | (None, None) => guess(frame),
        }
    }
}

fn one<T: Wire>(frame: &[u8], wrap: fn(T) -> Decoded) -> Result<Decoded, DecodeError> {
    match decode_frame::<T>(frame)? {
        Some((msg, _)) => Ok(wrap(msg)),
        None => Err(DecodeError::Malformed {
            expected: T::NAME,
            detail: "frame cut short".to_string(),
        }),
    }
}

/// A frame of a connection whose hello the capture does not hold: whichever kind fits.
fn guess(frame: &[u8]) -> Result<Decoded, DecodeError> {
    one(frame, Decoded::Client)
        .or_else(|_| one(frame, Decoded::Server))
        .or_else(|_| one(frame, Decoded::Peer))
        .or_else(|_| one(frame, Decoded::Hello))
        .or_else(|_| one(frame, Decoded::Status))
        .or_else(|_| one(frame, Decoded::Remove))
}

impl Direction {
    /// Adds the bytes at `offset`; returns the offset of a hole given up, if one was.
    fn take(&mut self, offset: u64, bytes: &[u8]) -> Option<u64> {
        let end = offset + bytes.len() as u64;
        if end <= self.next {
            return None; // a retransmission of what we have
        }
        if offset > self.next {
            self.ahead_len += bytes.len();
            self.ahead.insert(offset, bytes.to_vec());
            if self.ahead_len > MAX_REASSEMBLY_HELD {
                self.lost = true;
                self.ahead.clear();
                self.buf.clear();
                return Some(self.next);
            }
            return None;
        }
        let skip = (self.next - offset) as usize;
        self.buf.extend_from_slice(&bytes[skip..]);
        self.next = end;
        // Whatever waited past the hole may follow now.
        while let Some((&at, _)) = self.ahead.first_key_value() {
            if at > self.next {
                break;
            }
            let (at, held) = self.ahead.pop_first().expect("present");
            self.ahead_len -= held.len();
            let held_end = at + held.len() as u64;
            if held_end > self.next {
                let skip = (self.next - at) as usize;
                self.buf.extend_from_slice(&held[skip..]);
                self.next = held_end;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::frame;
    use crate::proto::HistoryDigest;
    use crate::proto::{ClientId, Fingerprint, Seq, View, ViewInfo};
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapPacket, PcapWriter};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use std::borrow::Cow;

    impl Decoded {
        /// The message's name (`Votes`, `Commit`, ...), as the Wireshark dissector shows it.
        fn name(&self) -> String {
            let debug = match self {
                Decoded::Hello(_) => return "Hello".to_string(),
                Decoded::Client(m) => format!("{m:?}"),
                Decoded::Server(m) => format!("{m:?}"),
                Decoded::Peer(m) => format!("{m:?}"),
                Decoded::Status(_) => return "StatusReply".to_string(),
                Decoded::Remove(m) => format!("{m:?}"),
                Decoded::Undecodable { .. } => return "UNDECODABLE".to_string(),
                Decoded::Gap { .. } => return "GAP".to_string(),
            };
            let end = debug
                .find(|c: char| !c.is_alphanumeric())
                .unwrap_or(debug.len());
            debug[..end].to_string()
        }
    }

    const CLIENT: ([u8; 4], u16) = ([127, 0, 0, 1], 40_000);
    const SERVER: ([u8; 4], u16) = ([127, 0, 0, 1], 7000);

    /// One Ethernet/IPv4/TCP packet from `from` to `to` at sequence number `seq`.
    fn packet(
        from: ([u8; 4], u16),
        to: ([u8; 4], u16),
        seq: u32,
        syn: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4(from.0, to.0, 64)
            .tcp(from.1, to.1, seq, 65_535);
        let builder = if syn { builder.syn() } else { builder.ack(1) };
        let mut out = Vec::new();
        builder.write(&mut out, payload).expect("build a packet");
        out
    }

    fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
        let mut writer = PcapWriter::new(Vec::new()).expect("pcap header");
        for (i, data) in packets.iter().enumerate() {
            let time = Duration::from_millis(1_000_000 + i as u64);
            let packet = PcapPacket::new(time, data.len() as u32, data);
            writer.write_packet(&packet).expect("write a packet");
        }
        writer.into_writer()
    }

    fn decoded(capture: &[u8]) -> (Vec<FrameLine>, Summary) {
        let mut lines = Vec::new();
        let summary = decode(capture, &[], |l| lines.push(l.clone())).expect("decodes");
        (lines, summary)
    }

    fn hello() -> Vec<u8> {
        frame(&Hello::Client {
            id: ClientId("alice".into()),
            last_seq: Seq(0),
            view: View(0),
            digest: HistoryDigest::EMPTY,
        })
        .expect("encode")
    }

    fn votes(seq: u64) -> Vec<u8> {
        frame(&ClientMsg::Votes {
            view: View(1),
            votes: vec![(Seq(seq), true)],
        })
        .expect("encode")
    }

    #[test]
    fn frames_split_reordered_and_repeated_come_out_whole_and_in_order() {
        let mut stream = hello();
        stream.extend(votes(1));
        stream.extend(votes(2));
        // Three pieces, cutting the hello and the second vote in two.
        let cut1 = 5;
        let cut2 = stream.len() - 3;
        let (a, b, c) = (&stream[..cut1], &stream[cut1..cut2], &stream[cut2..]);
        let isn = 1000u32;
        let at = |offset: usize| isn + 1 + offset as u32;
        let welcome = frame(&ServerMsg::Welcome {
            view: ViewInfo {
                number: View(1),
                primary: "127.0.0.1:7000".parse().expect("addr"),
                backup: None,
            },
            lease_ms: 5000,
            members: Fingerprint::default(),
            member: false,
        })
        .expect("encode");
        let capture = pcap(&[
            packet(CLIENT, SERVER, isn, true, &[]),
            packet(CLIENT, SERVER, at(cut2), false, c), // ahead of a hole
            packet(CLIENT, SERVER, at(0), false, a),
            packet(SERVER, CLIENT, 77, false, &welcome),
            packet(CLIENT, SERVER, at(0), false, a), // a retransmission
            packet(CLIENT, SERVER, at(cut1), false, b),
        ]);
        let (lines, summary) = decoded(&capture);
        let names: Vec<(String, &str)> = lines.iter().map(|l| (l.frame.name(), l.link)).collect();
        assert_eq!(
            names,
            vec![
                ("Welcome".to_string(), "?"),
                ("Hello".to_string(), "client"),
                ("Votes".to_string(), "client"),
                ("Votes".to_string(), "client"),
            ]
        );
        assert!(
            matches!(&lines[3].frame, Decoded::Client(ClientMsg::Votes { votes, .. }) if votes == &[(Seq(2), true)])
        );
        assert_eq!(summary.undecodable, 0);
        assert_eq!(lines[1].src.port(), CLIENT.1);
        assert_eq!(lines[1].time, Duration::from_millis(1_000_005));
    }

    #[test]
    fn a_bad_frame_is_reported_and_decoding_goes_on() {
        let mut stream = hello();
        // A frame of the right length whose body is no message.
        stream.extend([0, 0, 0, 3, 0xff, 0xfe, 0xfd]);
        stream.extend(votes(1));
        let other = ([127, 0, 0, 1], 40_001);
        let capture = pcap(&[
            packet(CLIENT, SERVER, 10, false, &stream),
            // A length prefix no frame may have: that direction is lost, no other.
            packet(other, SERVER, 10, false, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
            packet(other, SERVER, 17, false, &votes(9)),
            packet(CLIENT, SERVER, 10 + stream.len() as u32, false, &votes(2)),
        ]);
        let (lines, summary) = decoded(&capture);
        let names: Vec<String> = lines.iter().map(|l| l.frame.name()).collect();
        assert_eq!(
            names,
            ["Hello", "UNDECODABLE", "Votes", "UNDECODABLE", "Votes"]
        );
        assert!(matches!(
            &lines[1].frame,
            Decoded::Undecodable { len: Some(7), .. }
        ));
        assert!(
            matches!(&lines[3].frame, Decoded::Undecodable { len: None, error } if error.contains("exceeds"))
        );
        assert_eq!(summary.undecodable, 2);
        assert!(lines[1]
            .to_string()
            .contains("UNDECODABLE frame of 7 bytes"));
    }

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        let mut writer = PcapNgWriter::new(Vec::new()).expect("section header");
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65_535))
            .expect("interface");
        let data = packet(CLIENT, SERVER, 10, false, &hello());
        // In microseconds (the default resolution), as tshark writes them.
        let raw = Duration::from_nanos(1_500_000_123_456);
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: raw,
            original_len: data.len() as u32,
            data: Cow::Borrowed(&data),
            options: Vec::new(),
        };
        writer.write_pcapng_block(block).expect("packet");
        let (lines, _) = decoded(&writer.into_inner());
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].time, Duration::from_micros(1_500_000_123_456));
    }
}
