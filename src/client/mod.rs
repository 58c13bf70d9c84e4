//! The voting client as a pure state machine, in the same shape as [`crate::node::Node`]:
//! `handle_*` inputs with `now`, [`Client::poll_output`] and [`Client::poll_timeout`].
//!
//! The durability rule is [`ClientOutput`]'s: what the client records (a log line, a
//! promise) comes before every output that depends on it, and a host makes it durable
//! before it performs any later output. [`Client::invariants`] are checked after every
//! input in debug builds and by the simulator after every step.

mod cast;
mod invariants;
mod links;
pub mod policy;
mod views;
mod voting;

use crate::ballot_log::{LogEnd, LogLine};
use crate::link::ConnId;
use crate::proto::{
    ClientId, ClientMsg, Hello, MemberRecord, NodeId, Seq, ServerMsg, View, ViewInfo,
};
use cast::Cast;
pub use invariants::Broken;
use links::{LinkState, ServerLink};
use log::info;
use policy::Policy;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
pub use views::honoured_lease;
use views::Proposal;

/// What a client keeps durably besides its log (its `<log>.view` file): the highest view
/// number it promised, the servers of that view, the process it promised it to, and what
/// it recorded of the memberships of the view it follows and of the last proposal it
/// accepted (what a fresh primary after a cold restart waits for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Promised {
    pub view: View,
    pub servers: Vec<SocketAddr>,
    pub proposer: Option<NodeId>,
    pub followed: Option<MemberRecord>,
    pub accepted: Option<MemberRecord>,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub id: ClientId,
    /// Where to look for servers before any view is known.
    pub servers: Vec<SocketAddr>,
    pub policy: Policy,
    /// Done once the log holds 1..=until.
    pub until: Option<Seq>,
    /// Wait before redialing a server that refused or dropped us.
    pub redial: Duration,
}

/// What the caller must do, in order.
///
/// **Durability, per turn.** `Append` and `Promise` record state the client has already
/// acted on: every later output may depend on them (a `Resend` or `Accept` reporting the
/// log's end, the `Accept` a promise guards, the votes a promise allows). A host must make
/// each durable before it performs any output that follows it; it may batch a turn's
/// records and write them before the turn's first socket write. The reactor writes a
/// turn's log lines and syncs its promises before it flushes any connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientOutput {
    Dial(SocketAddr),
    Hello(ConnId, Hello),
    Send(ConnId, ClientMsg),
    Close(ConnId),
    /// Append this line to the log, and have it written before the next output.
    Append(LogLine),
    /// Record the promise (and the rest of [`Promised`]) before the next output (the
    /// `Accept` it guards): a restarted client must never promise a number twice. The
    /// view's servers are kept with it: where a restarted client looks besides
    /// `--servers` (its primary may be gone, and it may never have heard of the backup).
    Promise(Promised),
}

pub struct Client {
    cfg: ClientConfig,
    /// Where its log ends, and what a cold-restarted primary or a hello needs of it.
    log: LogEnd,
    /// The view whose primary this client follows: the newest installed view it heard of
    /// (`Welcome`, `NewView`). `None` before the first `Welcome`.
    view: Option<ViewInfo>,
    /// How long after hearing from `lease_holder` it refuses anyone else as primary.
    lease: Duration,
    /// The server whose lease this client honours: the primary of `view`, or the proposer
    /// it last promised (who may be about to act as primary).
    lease_holder: Option<SocketAddr>,
    /// When it last heard from `lease_holder`. `None`: never, or that connection closed
    /// (the process is gone: its lease is void).
    heard_holder: Option<Instant>,
    links: Vec<ServerLink>,
    /// Votes cast on ballots not yet logged, so a re-ask gets the same answer.
    cast: Cast,
    /// The first seq of the last `Resend` we asked for, so one gap is asked once.
    resend_asked: Option<Seq>,
    /// A proposal refused only for the lease, to reconsider the moment the lease holder's
    /// connection closes (a crashed primary's lease is void at once).
    deferred: Option<(ConnId, Proposal)>,
    /// What it keeps durably besides the log; `durable.proposer` is the process `promised`
    /// was given to: its re-sent proposal gets the same answer.
    durable: Promised,
    /// The view of the last proposal it accepted: where to look when no server of its own
    /// view answers (its primary may have died before telling it that view was installed).
    promised_view: Option<ViewInfo>,
    /// We learned of the view we follow from another server than its primary: the
    /// primary may not act in it yet, and what it sends us tagged with its older view
    /// (the catch-up our hello or `Resend` asked for) is dropped as stale. Ask again on
    /// the first current message from it.
    resend_pending: bool,
    /// When it started with a promise from before (a restart): the lease it may have
    /// given runs on for a while, unknown to this process.
    restarted_at: Option<Instant>,
    /// Since when it asks to leave the membership (`--until` reached, or a signal).
    leaving: Option<Instant>,
    /// The primary answered `Left`: a view without it is installed and no open ballot
    /// waits for its vote.
    left: bool,
    /// A server's `Refused { permanent: true }`: why this client cannot go on.
    refused: Option<String>,
    out: VecDeque<ClientOutput>,
}

impl Client {
    /// A client whose log already holds what `log` sums up, and which has promised view
    /// numbers up to `promised`.
    /// `promised`: what it persisted before a restart. Its servers are dialed besides
    /// `cfg.servers` (its primary may be gone, and `--servers` may not name the backup).
    pub fn new(mut cfg: ClientConfig, log: LogEnd, promised: &Promised, now: Instant) -> Client {
        let mut servers: Vec<SocketAddr> = Vec::new();
        for &addr in cfg.servers.iter().chain(&promised.servers) {
            if !servers.contains(&addr) {
                servers.push(addr);
            }
        }
        cfg.servers = servers;
        let links = cfg
            .servers
            .iter()
            .map(|&addr| ServerLink::new(addr, now))
            .collect();
        Client {
            cfg,
            log,
            view: None,
            durable: promised.clone(),
            lease: Duration::ZERO,
            lease_holder: None,
            heard_holder: None,
            links,
            cast: Cast::default(),
            resend_asked: None,
            deferred: None,
            restarted_at: (promised.view > View(0)).then_some(now),
            promised_view: None,
            resend_pending: false,
            leaving: None,
            left: false,
            refused: None,
            out: VecDeque::new(),
        }
    }

    // ----- getters -------------------------------------------------------------------

    pub fn id(&self) -> &ClientId {
        &self.cfg.id
    }

    pub fn last_logged(&self) -> Seq {
        self.log.last
    }

    pub fn view(&self) -> Option<ViewInfo> {
        self.view
    }

    /// The highest view number this client promised (accepted a proposal for, or followed).
    /// It accepts only proposals above it, so two proposals of one number can never both
    /// win a majority.
    fn promised(&self) -> View {
        self.durable.view
    }

    /// One line on the state, for a simulator failure report.
    pub fn describe(&self) -> String {
        format!(
            "logged={} view={:?} promised={} holder={:?} links={:?}",
            self.log.last,
            self.view.map(|v| v.to_string()),
            self.promised(),
            self.lease_holder,
            self.links
                .iter()
                .map(|l| (l.addr, l.state))
                .collect::<Vec<_>>()
        )
    }

    /// Its leave is agreed: it may exit.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Why a server refused this client for good, if one did: it cannot go on.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// The log holds every ballot up to `--until`.
    pub fn is_done(&self) -> bool {
        self.cfg.until.is_some_and(|u| self.log.last >= u)
    }

    fn debug_check(&self, after: &str) {
        if cfg!(debug_assertions) {
            if let Err(broken) = self.invariants() {
                panic!("client invariant broken after {after}: {broken}");
            }
        }
    }

    // ----- polls ---------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let redial = self
            .links
            .iter()
            .filter_map(|l| match l.state {
                LinkState::Idle { redial_at } => Some(redial_at),
                LinkState::Dialing | LinkState::Up(_) => None,
            })
            .min();
        // When the primary's lease runs out here, look further (see `look_further`).
        let lapse = self
            .heard_holder
            .filter(|_| self.view.is_some() && !self.fallbacks_all_linked())
            .map(|heard| heard + self.lease);
        redial.into_iter().chain(lapse).min()
    }

    // ----- inputs --------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        self.on_timeout(now);
        self.debug_check("handle_timeout");
    }

    pub fn handle_connected(&mut self, conn: ConnId, addr: SocketAddr, now: Instant) {
        self.on_connected(conn, addr, now);
        self.debug_check("handle_connected");
    }

    pub fn handle_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.on_dial_failed(addr, now);
        self.debug_check("handle_dial_failed");
    }

    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.on_closed(conn, now);
        self.debug_check("handle_closed");
    }

    pub fn handle_msg(&mut self, conn: ConnId, msg: ServerMsg, now: Instant) {
        self.on_msg(conn, msg, now);
        self.debug_check("handle_msg");
    }

    fn on_msg(&mut self, conn: ConnId, msg: ServerMsg, now: Instant) {
        let Some(from) = self.link_addr(conn) else {
            return;
        };
        match msg {
            ServerMsg::Welcome {
                view,
                lease_ms,
                members,
                member,
            } => {
                // The lease length is the primary's: a backup's own flags may differ.
                if (from == view.primary && !self.is_older(view)) || self.lease.is_zero() {
                    self.lease = honoured_lease(lease_ms);
                }
                let same = self.view.is_some_and(|v| v.number == view.number);
                self.adopt_view(conn, from, view, (members, member), now);
                if same && view.servers().any(|s| s == from) {
                    // A new link to a server of our view (a reconnect): it may not have our
                    // leave.
                    self.ask_to_leave();
                }
            }
            ServerMsg::NewView {
                view,
                lease_ms,
                members,
                member,
            } => {
                if from == view.primary && !self.is_older(view) {
                    self.lease = honoured_lease(lease_ms);
                }
                self.adopt_view(conn, from, view, (members, member), now);
            }
            ServerMsg::Propose {
                view,
                base,
                recovering,
                node,
                lease_ms,
                members,
                member,
            } => self.consider_proposal(
                conn,
                Proposal {
                    view,
                    base,
                    recovering,
                    node,
                    lease_ms,
                    members,
                    member,
                },
                now,
            ),
            ServerMsg::Lease {
                view,
                round,
                lease_ms,
            } => self.on_lease(conn, from, view, round, lease_ms, now),
            ServerMsg::VoteRequest { view, first, count } => {
                if self.current(conn, from, view, now) {
                    self.vote(view, first, count);
                }
            }
            ServerMsg::Results {
                view,
                first,
                tallies,
            } => {
                if self.current(conn, from, view, now) {
                    // A seq past the last there is comes from no server of ours.
                    let seqs = (first.0..=u64::MAX).map(Seq);
                    for (seq, tally) in seqs.zip(tallies) {
                        self.deliver(conn, seq, tally);
                    }
                }
            }
            ServerMsg::Left { view } => self.on_left(from, view),
            ServerMsg::Refused {
                view,
                reason,
                permanent,
            } => {
                info!(
                    "refused client={} conn={conn} view={view} permanent={permanent} reason={reason}",
                    self.cfg.id
                );
                // For good only from a server at least as new as what this client knows: a
                // replaced primary that has not heard of its successor would otherwise end
                // a client its successor serves. One older than the view it follows is
                // told so, as any stale sender; one older only than its promise is not
                // final, and is ignored.
                let followed = self.view.map_or(View(0), |v| v.number);
                if permanent && view >= followed.max(self.promised()) {
                    self.refused = Some(reason);
                } else if permanent && view < followed {
                    self.current(conn, from, view, now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
