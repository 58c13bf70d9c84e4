//! Turns fuzz bytes into the inputs a core takes: small numbers, so that views, seqs,
//! client indexes and connections collide often, which is where the interesting paths are.
#![allow(dead_code)]

use pbvote::link::ConnId;
use pbvote::proto::messages::OpenBallot;
use pbvote::proto::{
    ClientId, ClientMsg, Fingerprint, Hello, HistoryDigest, JoinRefusal, MemberRecord, NodeId, PeerMsg, Seq,
    ServerMsg, Snapshot, Tally, View, ViewInfo,
};
use std::net::SocketAddr;

pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn bit(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    /// Mostly small, now and then anything.
    pub fn num(&mut self) -> u64 {
        match self.byte() {
            b @ 0..=239 => u64::from(b % 24),
            240..=251 => u64::from(self.byte()) * 64,
            252..=253 => u64::MAX - u64::from(self.byte()),
            _ => u64::from_le_bytes(std::array::from_fn(|_| self.byte())),
        }
    }
    pub fn view(&mut self) -> View {
        View(self.num())
    }
    pub fn seq(&mut self) -> Seq {
        Seq(self.num())
    }
    pub fn idx(&mut self) -> u32 {
        u32::from(self.byte() % 8)
    }
    pub fn conn(&mut self) -> ConnId {
        ConnId {
            slot: u32::from(self.byte() % 6),
            gen: 0,
        }
    }
    pub fn addr(&mut self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(self.byte() % 3)))
    }
    pub fn id(&mut self) -> ClientId {
        ClientId(format!("c{}", self.byte() % 6))
    }
    pub fn tally(&mut self) -> Tally {
        Tally {
            yes: (self.num() % 9) as u32,
            no: (self.num() % 9) as u32,
        }
    }
    pub fn list<T>(&mut self, mut each: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.byte() % 6;
        (0..n).map(|_| each(self)).collect()
    }
    pub fn view_info(&mut self) -> ViewInfo {
        ViewInfo {
            number: self.view(),
            primary: self.addr(),
            backup: self.bit().then(|| self.addr()),
        }
    }
    pub fn fingerprint(&mut self) -> Fingerprint {
        Fingerprint {
            count: (self.num() % 8) as u32,
            digest: self.num(),
            mixed: self.bit(),
        }
    }
    pub fn record(&mut self) -> Option<MemberRecord> {
        self.bit().then(|| MemberRecord {
            view: self.view(),
            members: self.fingerprint(),
            member: self.bit(),
        })
    }

    /// Most often that of an empty log, which a server can match.
    pub fn digest(&mut self) -> HistoryDigest {
        if self.bit() {
            HistoryDigest::EMPTY
        } else {
            HistoryDigest(self.num())
        }
    }

    pub fn hello(&mut self) -> Hello {
        match self.byte() % 4 {
            0 | 1 => Hello::Client {
                id: self.id(),
                last_seq: self.seq(),
                view: self.view(),
                digest: self.digest(),
            },
            2 => Hello::Peer {
                node: NodeId(self.num()),
                listen: self.addr(),
                view: self.view(),
            },
            _ => Hello::Status,
        }
    }

    pub fn client_msg(&mut self) -> ClientMsg {
        match self.byte() % 7 {
            0 => ClientMsg::Votes {
                view: self.view(),
                votes: self.list(|i| (i.seq(), i.bit())),
            },
            1 => ClientMsg::Resend {
                view: self.view(),
                from: self.seq(),
            },
            2 => ClientMsg::Accept {
                view: self.view(),
                last_seq: self.seq(),
                votes: self.list(|i| (i.seq(), i.bit())),
                tail: self.list(|i| i.tally()),
                tail_base: self.digest(),
                followed_members: self.record(),
                promised_members: self.record(),
            },
            3 => ClientMsg::Reject {
                proposed: self.view(),
                accepted: self.view_info(),
                promised: self.view(),
                retry_after_ms: self.bit().then(|| self.num()),
            },
            4 => ClientMsg::Stale {
                accepted: self.view_info(),
            },
            5 => ClientMsg::LeaseAck {
                view: self.view(),
                round: self.num(),
                logged: self.seq(),
            },
            _ => ClientMsg::Leave { view: self.view() },
        }
    }

    pub fn server_msg(&mut self) -> ServerMsg {
        match self.byte() % 9 {
            0 => ServerMsg::Welcome {
                view: self.view_info(),
                lease_ms: self.num(),
                members: self.fingerprint(),
                member: self.bit(),
            },
            1 => ServerMsg::NewView {
                view: self.view_info(),
                lease_ms: self.num(),
                members: self.fingerprint(),
                member: self.bit(),
            },
            2 => ServerMsg::Propose {
                view: self.view_info(),
                base: self.view(),
                recovering: self.bit(),
                node: NodeId(self.num() % 3),
                lease_ms: self.num(),
                members: self.fingerprint(),
                member: self.bit(),
            },
            3 => ServerMsg::Lease {
                view: self.view(),
                round: self.num(),
                lease_ms: self.num(),
            },
            4 => ServerMsg::VoteRequest {
                view: self.view(),
                first: self.seq(),
                count: (self.num() % 70) as u32,
            },
            5 | 6 => ServerMsg::Results {
                view: self.view(),
                first: self.seq(),
                tallies: self.list(|i| i.tally()),
            },
            7 => ServerMsg::Refused {
                view: self.view(),
                reason: "fuzz".into(),
                permanent: self.bit(),
            },
            _ => ServerMsg::Left { view: self.view() },
        }
    }

    pub fn peer_msg(&mut self) -> PeerMsg {
        match self.byte() % 12 {
            0 => PeerMsg::Snapshot(Box::new(Snapshot {
                view: self.view_info(),
                clients: self.list(|i| i.id()),
                members: self.list(|i| i.idx()),
                results_first: self.seq(),
                results: self.list(|i| i.tally()),
                results_base: self.digest(),
                open: self.list(|i| OpenBallot {
                    seq: i.seq(),
                    voters: i.list(|i| i.idx()),
                    votes: i.list(|i| (i.idx(), i.bit())),
                }),
            })),
            1 => PeerMsg::Install {
                view: self.view_info(),
                members: self.list(|i| i.idx()),
                removed: self.list(|i| i.idx()),
            },
            2 => PeerMsg::InstallAck { view: self.view() },
            3 | 4 => PeerMsg::Heartbeat { view: self.view() },
            5 => PeerMsg::Register {
                view: self.view(),
                client: self.id(),
            },
            6 => PeerMsg::Open {
                view: self.view(),
                seq: self.seq(),
                voters: (self.num() % 8) as u32,
            },
            7 => PeerMsg::Forward {
                view: self.view(),
                votes: self.list(|i| (i.seq(), i.idx(), i.bit())),
            },
            8 => PeerMsg::Commit {
                view: self.view(),
                seq: self.seq(),
                tally: self.tally(),
            },
            9 => PeerMsg::CommitAck {
                view: self.view(),
                seq: self.seq(),
            },
            10 => PeerMsg::JoinRefused {
                view: self.view(),
                reason: match self.byte() % 4 {
                    0 => JoinRefusal::HasBackup,
                    1 => JoinRefusal::Recovering,
                    2 => JoinRefusal::WaitingForClients,
                    _ => JoinRefusal::NotPrimary,
                },
            },
            _ => PeerMsg::Fence {
                view: self.view_info(),
            },
        }
    }
}
