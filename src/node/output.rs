//! What a server tells its caller to do ([`Output`]), and the queue they wait in
//! ([`Outbox`]), which is also where outputs that may ride together are folded into one.

use super::role::StepDown;
use crate::link::ConnId;
use crate::proto::limits::MAX_RESULTS_PER_FRAME;
use crate::proto::{Hello, PeerMsg, RemoveReply, Seq, ServerMsg, StatusReply, Tally, View};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Open a connection to `addr`; report back with [`super::Node::handle_connected`] or
    /// [`super::Node::handle_dial_failed`].
    Dial(SocketAddr),
    /// Send the first frame on a connection this node dialed.
    Hello(ConnId, Hello),
    ToClient(ConnId, ServerMsg),
    /// The same message to each of these client connections: encoded once, not per client.
    ToClients(Vec<ConnId>, ServerMsg),
    ToPeer(ConnId, PeerMsg),
    /// Answer a status connection; close it once written.
    Status(ConnId, Box<StatusReply>),
    /// Answer a `remove-client` connection; close it once written.
    Removed(ConnId, RemoveReply),
    /// Close the connection once what is queued for it is written.
    Close(ConnId, &'static str),
    /// fork/exec a backup on `--backup-listen`, first killing (and reaping) the one we
    /// spawned before if it still runs: it was declared dead.
    SpawnBackup,
    /// Step down: flush what is queued, then exit. This server was replaced, or has no
    /// primary to join.
    Exit(StepDown),
    /// Call [`super::Node::handle_drained`] once everything queued for this connection is
    /// written (a catch-up goes out a burst at a time, not all into one output buffer).
    WhenDrained(ConnId),
}

/// The outputs not yet polled, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Output>,
}

impl Outbox {
    pub fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    pub fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }

    pub fn send_client(&mut self, conn: ConnId, msg: ServerMsg) {
        self.push(Output::ToClient(conn, msg));
    }

    /// `msg` to every connection of `conns`, if there is one.
    pub fn send_clients(&mut self, conns: Vec<ConnId>, msg: ServerMsg) {
        if !conns.is_empty() {
            self.push(Output::ToClients(conns, msg));
        }
    }

    pub fn send_peer(&mut self, conn: ConnId, msg: PeerMsg) {
        self.push(Output::ToPeer(conn, msg));
    }

    pub fn close(&mut self, conn: ConnId, why: &'static str) {
        self.push(Output::Close(conn, why));
    }

    /// Tells `conns` the results from `first` on. Results published in one turn ride in
    /// one frame: the backup acks each `Commit` on its own, so a turn that reads 16
    /// `CommitAck`s publishes 16 times, and each publish joins the `Results` still queued
    /// if it continues it, in the same view, to the same connections. It may overtake only
    /// broadcasts that nothing orders against it (`VoteRequest`, `Lease`) and messages to
    /// the peer; never a message to one client (a catch-up it would overtake leaves a gap
    /// the client has already asked about, and it would drop the result).
    pub fn results(&mut self, conns: Vec<ConnId>, view: View, first: Seq, tallies: Vec<Tally>) {
        if conns.is_empty() {
            return;
        }
        if let Some(queued) = self.queued_results_continued_by(&conns, view, first) {
            if queued.len() + tallies.len() <= MAX_RESULTS_PER_FRAME {
                queued.extend_from_slice(&tallies);
                return;
            }
        }
        self.push(Output::ToClients(
            conns,
            ServerMsg::Results {
                view,
                first,
                tallies,
            },
        ));
    }

    /// The tallies of the last queued `Results` to exactly `conns` in `view`, if `first`
    /// continues them and nothing ordered against them is queued after them.
    fn queued_results_continued_by(
        &mut self,
        conns: &[ConnId],
        view: View,
        first: Seq,
    ) -> Option<&mut Vec<Tally>> {
        for output in self.queue.iter_mut().rev() {
            match output {
                Output::ToClients(
                    to,
                    ServerMsg::Results {
                        view: v,
                        first: f,
                        tallies,
                    },
                ) => {
                    let continues = *v == view
                        && f.0 + tallies.len() as u64 == first.0
                        && to.as_slice() == conns;
                    return continues.then_some(tallies);
                }
                Output::ToClients(_, ServerMsg::VoteRequest { .. } | ServerMsg::Lease { .. })
                | Output::ToPeer(..) => {}
                _ => return None,
            }
        }
        None
    }
}
