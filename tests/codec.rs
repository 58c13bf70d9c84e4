//! The frame codec: every message round-trips; any bytes decode to a message, "need more"
//! or a clean error, never a panic; a frame is never decoded on the wrong kind of link.

use pbvote::proto::codec::{decode_frame, frame, DecodeError, Wire};
use pbvote::proto::limits::{MAX_CLIENT_FRAME_LEN, MAX_FRAME_LEN, MAX_HELLO_LEN};
use pbvote::proto::messages::OpenBallot;
use pbvote::proto::{
    ClientId, ClientMsg, ConnectionStats, Fingerprint, Hello, HistoryDigest, JoinRefusal,
    LoopStats, MemberRecord, MemberStatus, NodeId, PeerMsg, PeerStatus, RemoveReply, Role, Seq,
    ServerMsg, Snapshot, StatusReply, Tally, View, ViewInfo,
};
use proptest::prelude::*;
use std::net::SocketAddr;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn view_info() -> impl Strategy<Value = ViewInfo> {
    (any::<u64>(), addr(), proptest::option::of(addr())).prop_map(|(n, primary, backup)| ViewInfo {
        number: View(n),
        primary,
        backup,
    })
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[a-z0-9-]{1,64}".prop_map(ClientId)
}

fn join_refusal() -> impl Strategy<Value = JoinRefusal> {
    prop_oneof![
        Just(JoinRefusal::HasBackup),
        Just(JoinRefusal::Recovering),
        Just(JoinRefusal::WaitingForClients),
        Just(JoinRefusal::NotPrimary),
    ]
}

fn tally() -> impl Strategy<Value = Tally> {
    (any::<u32>(), any::<u32>()).prop_map(|(yes, no)| Tally { yes, no })
}

fn hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        (client_id(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(id, s, v, d)| {
            Hello::Client {
                id,
                last_seq: Seq(s),
                view: View(v),
                digest: HistoryDigest(d),
            }
        }),
        (any::<u64>(), addr(), any::<u64>()).prop_map(|(n, listen, v)| Hello::Peer {
            node: NodeId(n),
            listen,
            view: View(v),
        }),
        Just(Hello::Status),
        client_id().prop_map(|id| Hello::Remove { id }),
    ]
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<bool>()), 0..20)
        )
            .prop_map(|(v, votes)| ClientMsg::Votes {
                view: View(v),
                votes: votes.into_iter().map(|(s, yes)| (Seq(s), yes)).collect(),
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(v, s)| ClientMsg::Resend {
            view: View(v),
            from: Seq(s),
        }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<bool>()), 0..8),
            proptest::collection::vec(tally(), 0..8),
            any::<u64>(),
            proptest::option::of(member_record()),
            proptest::option::of(member_record()),
        )
            .prop_map(
                |(v, s, votes, tail, base, followed_members, promised_members)| {
                    ClientMsg::Accept {
                        view: View(v),
                        last_seq: Seq(s),
                        votes: votes.into_iter().map(|(s, y)| (Seq(s), y)).collect(),
                        tail,
                        tail_base: HistoryDigest(base),
                        followed_members,
                        promised_members,
                    }
                }
            ),
        (
            any::<u64>(),
            view_info(),
            any::<u64>(),
            any::<Option<u64>>()
        )
            .prop_map(
                |(p, accepted, promised, retry_after_ms)| ClientMsg::Reject {
                    proposed: View(p),
                    accepted,
                    promised: View(promised),
                    retry_after_ms,
                }
            ),
        view_info().prop_map(|accepted| ClientMsg::Stale { accepted }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(v, round, logged)| {
            ClientMsg::LeaseAck {
                view: View(v),
                round,
                logged: Seq(logged),
            }
        }),
        any::<u64>().prop_map(|v| ClientMsg::Leave { view: View(v) }),
    ]
}

fn fingerprint() -> impl Strategy<Value = Fingerprint> {
    (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(count, digest, mixed)| Fingerprint {
        count,
        digest,
        mixed,
    })
}

fn member_record() -> impl Strategy<Value = MemberRecord> {
    (any::<u64>(), fingerprint(), any::<bool>()).prop_map(|(v, members, member)| MemberRecord {
        view: View(v),
        members,
        member,
    })
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (view_info(), any::<u64>(), fingerprint(), any::<bool>()).prop_map(
            |(view, lease_ms, members, member)| ServerMsg::Welcome {
                view,
                lease_ms,
                members,
                member
            }
        ),
        (view_info(), any::<u64>(), fingerprint(), any::<bool>()).prop_map(
            |(view, lease_ms, members, member)| ServerMsg::NewView {
                view,
                lease_ms,
                members,
                member
            }
        ),
        (
            view_info(),
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            fingerprint(),
            any::<bool>()
        )
            .prop_map(|(view, b, recovering, n, lease_ms, members, member)| {
                ServerMsg::Propose {
                    view,
                    base: View(b),
                    recovering,
                    node: NodeId(n),
                    lease_ms,
                    members,
                    member,
                }
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(v, round, lease_ms)| {
            ServerMsg::Lease {
                view: View(v),
                round,
                lease_ms,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(v, s, count)| {
            ServerMsg::VoteRequest {
                view: View(v),
                first: Seq(s),
                count,
            }
        }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(tally(), 0..20)
        )
            .prop_map(|(v, s, tallies)| ServerMsg::Results {
                view: View(v),
                first: Seq(s),
                tallies,
            }),
        (any::<u64>(), ".{0,40}", any::<bool>()).prop_map(|(v, reason, permanent)| {
            ServerMsg::Refused {
                view: View(v),
                reason,
                permanent,
            }
        }),
        any::<u64>().prop_map(|v| ServerMsg::Left { view: View(v) }),
    ]
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        view_info(),
        proptest::collection::vec(client_id(), 0..8),
        proptest::collection::vec(any::<u32>(), 0..8),
        proptest::collection::vec(tally(), 0..8),
        proptest::collection::vec(
            (
                any::<u64>(),
                proptest::collection::vec(any::<u32>(), 0..8),
                proptest::collection::vec((any::<u32>(), any::<bool>()), 0..8),
            ),
            0..4,
        ),
    )
        .prop_map(|(view, clients, members, results, open)| Snapshot {
            view,
            clients,
            members,
            results_first: Seq(1),
            results,
            results_base: HistoryDigest::EMPTY,
            open: open
                .into_iter()
                .map(|(seq, voters, votes)| OpenBallot {
                    seq: Seq(seq),
                    voters,
                    votes,
                })
                .collect(),
        })
}

fn peer_msg() -> impl Strategy<Value = PeerMsg> {
    let v = any::<u64>().prop_map(View);
    let s = any::<u64>().prop_map(Seq);
    prop_oneof![
        snapshot().prop_map(|s| PeerMsg::Snapshot(Box::new(s))),
        (
            view_info(),
            proptest::collection::vec(any::<u32>(), 0..8),
            proptest::collection::vec(any::<u32>(), 0..3)
        )
            .prop_map(|(view, members, removed)| PeerMsg::Install {
                view,
                members,
                removed
            }),
        any::<u64>().prop_map(|v| PeerMsg::InstallAck { view: View(v) }),
        v.clone().prop_map(|view| PeerMsg::Heartbeat { view }),
        (v.clone(), client_id()).prop_map(|(view, client)| PeerMsg::Register { view, client }),
        (v.clone(), s.clone(), any::<u32>()).prop_map(|(view, seq, voters)| PeerMsg::Open {
            view,
            seq,
            voters
        }),
        (
            v.clone(),
            proptest::collection::vec((any::<u64>(), any::<u32>(), any::<bool>()), 0..20)
        )
            .prop_map(|(view, votes)| PeerMsg::Forward {
                view,
                votes: votes
                    .into_iter()
                    .map(|(s, client, yes)| (Seq(s), client, yes))
                    .collect(),
            }),
        (v.clone(), s.clone(), tally()).prop_map(|(view, seq, tally)| PeerMsg::Commit {
            view,
            seq,
            tally
        }),
        (v.clone(), s).prop_map(|(view, seq)| PeerMsg::CommitAck { view, seq }),
        (v, join_refusal()).prop_map(|(view, reason)| PeerMsg::JoinRefused { view, reason }),
        view_info().prop_map(|view| PeerMsg::Fence { view }),
    ]
}

fn remove_reply() -> impl Strategy<Value = RemoveReply> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..5)).prop_map(|(v, seqs)| {
            RemoveReply::Removed {
                view: View(v),
                unblocked: seqs.into_iter().map(Seq).collect(),
            }
        }),
        Just(RemoveReply::NoSuchClient),
        proptest::option::of(addr()).prop_map(|primary| RemoveReply::AskPrimary { primary }),
    ]
}

fn status_reply() -> impl Strategy<Value = StatusReply> {
    (
        any::<u64>(),
        view_info(),
        any::<u64>(),
        proptest::collection::vec(client_id(), 0..4),
        proptest::option::of((
            proptest::option::of(addr()),
            any::<bool>(),
            any::<Option<u64>>(),
        )),
    )
        .prop_map(|(node, view, n, clients, peer)| StatusReply {
            node: NodeId(node),
            role: Role::Backup,
            view,
            next_seq: Seq(n),
            committed: Seq(n / 2),
            open_ballots: 1,
            proposing: Some(View(n)),
            connected_clients: clients.len() as u64,
            clients,
            peer: peer.map(|(addr, connected, last_heard_ms)| PeerStatus {
                addr,
                connected,
                last_heard_ms,
                alive: connected,
            }),
            members: vec![MemberStatus {
                id: ClientId("m".into()),
                connected: n % 2 == 0,
                absent_ms: Some(n),
                voter_from: Some(Seq(n)),
            }],
            connections: Some(ConnectionStats {
                open: n,
                max: n / 3,
                rejected: n / 5,
            }),
            event_loop: Some(LoopStats {
                heartbeats_sent: n,
                heartbeat_gap_max_ms: n / 7,
                turn_max_ms: n / 11,
                recent_heartbeat_gap_max_ms: n / 13,
                recent_turn_max_ms: n / 17,
            }),
        })
}

/// Round trip, every truncation needs more bytes, and no other link kind accepts it. The
/// body is what serde_cbor writes, whether the message took the hand-written path or not.
fn check_frame<T: Wire + PartialEq + std::fmt::Debug>(msg: &T) {
    let bytes = frame(msg).expect("encodes");
    assert_eq!(
        bytes[4..],
        serde_cbor::to_vec(msg).expect("serde_cbor encodes")[..],
        "{msg:?}"
    );
    if let Some(hot) = T::decode_hot(&bytes[4..]) {
        assert_eq!(&hot, msg);
    }
    let (back, used) = decode_frame::<T>(&bytes)
        .expect("decodes")
        .expect("complete");
    assert_eq!(&back, msg);
    assert_eq!(used, bytes.len());
    for cut in 0..bytes.len() {
        assert_eq!(
            decode_frame::<T>(&bytes[..cut]).map(|o| o.is_some()),
            Ok(false),
            "cut {cut}"
        );
    }
    fn refused<U: Wire>(bytes: &[u8], name: &str) {
        if U::NAME != name {
            assert!(
                decode_frame::<U>(bytes).is_err(),
                "a {name} decoded as {}",
                U::NAME
            );
        }
    }
    refused::<Hello>(&bytes, T::NAME);
    refused::<ClientMsg>(&bytes, T::NAME);
    refused::<ServerMsg>(&bytes, T::NAME);
    refused::<PeerMsg>(&bytes, T::NAME);
    refused::<StatusReply>(&bytes, T::NAME);
}

proptest! {
    #[test]
    fn hello_frames(msg in hello()) { check_frame(&msg) }

    #[test]
    fn client_frames(msg in client_msg()) { check_frame(&msg) }

    #[test]
    fn server_frames(msg in server_msg()) { check_frame(&msg) }

    #[test]
    fn peer_frames(msg in peer_msg()) { check_frame(&msg) }

    #[test]
    fn status_frames(msg in status_reply()) { check_frame(&msg) }

    #[test]
    fn remove_reply_frames(msg in remove_reply()) { check_frame(&msg) }

    /// Whatever the hand-written decoder accepts, serde_cbor reads as the same message:
    /// valid frames with one byte changed, cut short or extended.
    #[test]
    fn the_hot_path_never_disagrees_with_serde_cbor(
        client in client_msg(),
        server in server_msg(),
        peer in peer_msg(),
        at in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
    ) {
        agrees(&client, at, byte)?;
        agrees(&server, at, byte)?;
        agrees(&peer, at, byte)?;
    }

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Each must return, never panic; an error must say what it was.
        for result in [
            decode_frame::<Hello>(&bytes).map(|_| ()),
            decode_frame::<ClientMsg>(&bytes).map(|_| ()),
            decode_frame::<ServerMsg>(&bytes).map(|_| ()),
            decode_frame::<PeerMsg>(&bytes).map(|_| ()),
            decode_frame::<StatusReply>(&bytes).map(|_| ()),
        ] {
            if let Err(e) = result {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn a_valid_prefix_with_any_body_fails_cleanly(body in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let _ = decode_frame::<PeerMsg>(&bytes);
        let _ = decode_frame::<Hello>(&bytes);
    }
}

fn agrees<T: Wire + PartialEq + std::fmt::Debug>(
    msg: &T,
    at: proptest::sample::Index,
    byte: u8,
) -> Result<(), TestCaseError> {
    let body = serde_cbor::to_vec(msg).expect("encodes");
    let mut changed = body.clone();
    changed[at.index(body.len())] = byte;
    let mut extended = body.clone();
    extended.push(byte);
    let cut = body[..at.index(body.len())].to_vec();
    for bytes in [changed, extended, cut]
        .into_iter()
        .chain(widened_forms(&body))
    {
        if let Some(hot) = T::decode_hot(&bytes) {
            prop_assert_eq!(serde_cbor::from_slice::<T>(&bytes).ok(), Some(hot));
        }
    }
    Ok(())
}

/// The body with one CBOR head (a number, or a text, array or map length) written in a
/// longer form than the shortest, for each head and each longer width. Valid CBOR that
/// serde_cbor reads differently in places (an enum only from a one-byte map head).
fn widened_forms(body: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let (major, info) = (body[i] >> 5, body[i] & 0x1f);
        if major == 7 {
            i += 1; // true, false
            continue;
        }
        let arg_len = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return forms, // not a form our encoder writes
        };
        let Some(arg) = body.get(i + 1..i + 1 + arg_len) else {
            return forms;
        };
        let mut n = if info < 24 { u64::from(info) } else { 0 };
        for &b in arg {
            n = n << 8 | u64::from(b);
        }
        let end = i + 1 + arg_len;
        for (code, width) in [(24u8, 1usize), (25, 2), (26, 4), (27, 8)] {
            if width <= arg_len || (width < 8 && n >> (8 * width) != 0) {
                continue;
            }
            let mut form = body[..i].to_vec();
            form.push(major << 5 | code);
            form.extend_from_slice(&n.to_be_bytes()[8 - width..]);
            form.extend_from_slice(&body[end..]);
            forms.push(form);
        }
        // A text's or byte string's bytes are not heads.
        i = if major == 2 || major == 3 {
            end + n as usize
        } else {
            end
        };
    }
    forms
}

#[test]
fn an_oversized_length_prefix_is_refused_before_the_body_arrives() {
    let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert_eq!(
        decode_frame::<PeerMsg>(&len),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    // Links that never carry a snapshot allow far less.
    fn one_byte_over<T: Wire + std::fmt::Debug>(max: usize) {
        assert_eq!(T::MAX_LEN, max);
        let len = (max as u32 + 1).to_be_bytes();
        assert_eq!(
            decode_frame::<T>(&len).map(|_| ()),
            Err(DecodeError::TooLarge { len: max + 1, max })
        );
    }
    one_byte_over::<Hello>(MAX_HELLO_LEN);
    one_byte_over::<ClientMsg>(MAX_CLIENT_FRAME_LEN);
    one_byte_over::<ServerMsg>(MAX_CLIENT_FRAME_LEN);
}
