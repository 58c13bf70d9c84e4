//! The voting client as a pure state machine, in the same shape as [`crate::node::Node`]:
//! `handle_*` inputs with `now`, [`Client::poll_output`] and [`Client::poll_timeout`].
//!
//! The durability rule is [`ClientOutput`]'s: what the client records (a log line, a
//! promise) comes before every output that depends on it, and a host makes it durable
//! before it performs any later output. [`Client::invariants`] are checked after every
//! input in debug builds and by the simulator after every step.

mod cast;
pub mod policy;

use crate::ballot_log::LogLine;
use crate::link::ConnId;
use crate::proto::limits::{MAX_OPEN_BALLOTS, MAX_RECOVERY_TAIL};
use crate::proto::{ClientId, ClientMsg, Hello, NodeId, Seq, ServerMsg, Tally, View, ViewInfo};
use cast::Cast;
use log::{debug, info, warn};
use policy::Policy;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a client persisted of its promises (its `<log>.view` file): the highest view
/// number it promised, and the servers of that view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Promised {
    pub view: View,
    pub servers: Vec<SocketAddr>,
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
/// records and write them before the turn's first socket write
/// ([`ClientOutput::is_record`] tells which outputs they are). The reactor writes a
/// turn's log lines and syncs its promises before it flushes any connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientOutput {
    Dial(SocketAddr),
    Hello(ConnId, Hello),
    Send(ConnId, ClientMsg),
    Close(ConnId),
    /// Append this line to the log, and have it written before the next output.
    Append(LogLine),
    /// Record that the client promised this view's number, before the next output (the
    /// `Accept` it guards): a restarted client must never promise a number twice. The
    /// view's servers are kept with it: where a restarted client looks besides
    /// `--servers` (its primary may be gone, and it may never have heard of the backup).
    Promise(ViewInfo),
}

impl ClientOutput {
    /// State the client records, which must be durable before any output after it.
    pub fn is_record(&self) -> bool {
        match self {
            ClientOutput::Append(_) | ClientOutput::Promise(_) => true,
            ClientOutput::Dial(_)
            | ClientOutput::Hello(..)
            | ClientOutput::Send(..)
            | ClientOutput::Close(_) => false,
        }
    }
}

/// A rule of the client's state that broke: which, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub rule: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// A `Propose` as the client weighs it.
#[derive(Clone, Copy, Debug)]
struct Proposal {
    view: ViewInfo,
    base: View,
    recovering: bool,
    node: NodeId,
    lease_ms: u64,
}

/// A client honours a lease this fraction (1/128, 0.8 %) longer than the server counts on
/// it. The server counts from when it sent a renewal, the client from when it received
/// it, so with clocks that run at one rate the client's window always covers the
/// server's; the margin keeps it so while the two clocks' rates differ by less than
/// 0.8 % (a quartz clock is off by about 0.01 %; a VM's that loses ticks, by more).
const LEASE_DRIFT_DIVISOR: u32 = 128;

/// How long a client refuses anyone else after hearing a lease of `lease_ms` from its
/// holder.
pub fn honoured_lease(lease_ms: u64) -> Duration {
    let lease = Duration::from_millis(lease_ms);
    lease + lease / LEASE_DRIFT_DIVISOR
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LinkState {
    /// Not connected; dial at `redial_at`.
    Idle {
        redial_at: Instant,
    },
    Dialing,
    Up(ConnId),
}

#[derive(Clone, Debug)]
struct ServerLink {
    addr: SocketAddr,
    state: LinkState,
}

pub struct Client {
    cfg: ClientConfig,
    last_logged: Seq,
    /// The view whose primary this client follows: the newest installed view it heard of
    /// (`Welcome`, `NewView`). `None` before the first `Welcome`.
    view: Option<ViewInfo>,
    /// The highest view number this client accepted a proposal for. It accepts only
    /// proposals above it, so two proposals of one number can never both win a majority.
    promised: View,
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
    /// The last tallies logged (ending at `last_logged`), for a cold-restarted primary.
    recent: VecDeque<Tally>,
    /// A proposal refused only for the lease, to reconsider the moment the lease holder's
    /// connection closes (a crashed primary's lease is void at once).
    deferred: Option<(ConnId, Proposal)>,
    /// The process `promised` was given to: its re-sent proposal gets the same answer.
    promised_to: Option<NodeId>,
    /// The view of the last proposal it accepted: where to look when no server of its own
    /// view answers (its primary may have died before telling it that view was installed).
    promised_view: Option<ViewInfo>,
    /// We learned of the view we follow from another server than its primary: the
    /// primary may not act in it yet, and what it sends us tagged with its older view
    /// (the catch-up our hello or `Resend` asked for) is dropped as stale. Ask again on
    /// the first current message from it.
    resend_pending: bool,
    out: VecDeque<ClientOutput>,
}

impl Client {
    /// A client whose log already holds 1..=`last_logged`, the last of them `recent`, and
    /// which has promised view numbers up to `promised`.
    /// `promised`: what it persisted before a restart. Its servers are dialed besides
    /// `cfg.servers` (its primary may be gone, and `--servers` may not name the backup).
    pub fn new(
        mut cfg: ClientConfig,
        last_logged: Seq,
        recent: &[Tally],
        promised: &Promised,
        now: Instant,
    ) -> Client {
        let mut servers: Vec<SocketAddr> = Vec::new();
        for &addr in cfg.servers.iter().chain(&promised.servers) {
            if !servers.contains(&addr) {
                servers.push(addr);
            }
        }
        cfg.servers = servers;
        let keep = recent.len().min(MAX_RECOVERY_TAIL);
        let recent = recent[recent.len() - keep..].iter().copied().collect();
        let links = cfg
            .servers
            .iter()
            .map(|&addr| ServerLink {
                addr,
                state: LinkState::Idle { redial_at: now },
            })
            .collect();
        Client {
            cfg,
            last_logged,
            view: None,
            promised: promised.view,
            lease: Duration::ZERO,
            lease_holder: None,
            heard_holder: None,
            links,
            cast: Cast::default(),
            resend_asked: None,
            recent,
            deferred: None,
            promised_to: None,
            promised_view: None,
            resend_pending: false,
            out: VecDeque::new(),
        }
    }

    // ----- getters -------------------------------------------------------------------

    pub fn id(&self) -> &ClientId {
        &self.cfg.id
    }

    pub fn last_logged(&self) -> Seq {
        self.last_logged
    }

    pub fn view(&self) -> Option<ViewInfo> {
        self.view
    }

    /// One line on the state, for a simulator failure report.
    pub fn describe(&self) -> String {
        format!(
            "logged={} view={:?} promised={} holder={:?} links={:?}",
            self.last_logged,
            self.view.map(|v| v.to_string()),
            self.promised,
            self.lease_holder,
            self.links
                .iter()
                .map(|l| (l.addr, l.state))
                .collect::<Vec<_>>()
        )
    }

    /// The log holds every ballot up to `--until`.
    pub fn is_done(&self) -> bool {
        self.cfg.until.is_some_and(|u| self.last_logged >= u)
    }

    /// The rules the client's state keeps after every input.
    pub fn invariants(&self) -> Result<(), Broken> {
        let broken = |rule, detail| Err(Broken { rule, detail });
        if let Some(view) = self.view.filter(|v| v.number > self.promised) {
            return broken(
                "promise-covers-the-view-followed",
                format!("follows {} with promise {}", view.number, self.promised),
            );
        }
        if let Some(view) = self.promised_view.filter(|v| v.number > self.promised) {
            return broken(
                "promise-covers-the-proposal-accepted",
                format!("accepted {} with promise {}", view.number, self.promised),
            );
        }
        if let Err(detail) = self.cast.check(self.last_logged) {
            return broken("votes-only-on-unlogged-ballots", detail);
        }
        if self.recent.len() > MAX_RECOVERY_TAIL || self.recent.len() as u64 > self.last_logged.0 {
            return broken(
                "recent-tail-within-the-log",
                format!(
                    "{} recent of {} logged",
                    self.recent.len(),
                    self.last_logged
                ),
            );
        }
        for (i, link) in self.links.iter().enumerate() {
            if self.links[..i].iter().any(|l| l.addr == link.addr) {
                return broken("one-link-per-server", format!("two links to {}", link.addr));
            }
        }
        if self.deferred.is_some() && self.lease_holder.is_none() {
            return broken(
                "a-deferred-proposal-waits-on-a-holder",
                "a deferred proposal with no lease holder".into(),
            );
        }
        Ok(())
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

    fn on_timeout(&mut self, now: Instant) {
        self.look_further(now);
        for link in &mut self.links {
            if let LinkState::Idle { redial_at } = link.state {
                if redial_at <= now {
                    link.state = LinkState::Dialing;
                    self.out.push_back(ClientOutput::Dial(link.addr));
                }
            }
        }
    }

    fn on_connected(&mut self, conn: ConnId, addr: SocketAddr, _now: Instant) {
        // Only the dial we are waiting for: a late answer to an abandoned one is closed.
        let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.addr == addr && l.state == LinkState::Dialing)
        else {
            self.out.push_back(ClientOutput::Close(conn));
            return;
        };
        debug!(
            "client-connected client={} server={addr} conn={conn}",
            self.cfg.id
        );
        link.state = LinkState::Up(conn);
        self.out.push_back(ClientOutput::Hello(
            conn,
            Hello::Client {
                id: self.cfg.id.clone(),
                last_seq: self.last_logged,
                view: self
                    .view
                    .map_or(self.promised, |v| v.number.max(self.promised)),
            },
        ));
    }

    fn on_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.addr == addr && l.state == LinkState::Dialing)
        {
            debug!("client-dial-failed client={} server={addr}", self.cfg.id);
            link.state = LinkState::Idle {
                redial_at: now + self.cfg.redial,
            };
        }
    }

    /// The addresses we were started with and the servers of the last proposal we accepted.
    fn fallbacks(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let promised = self.promised_view.iter().flat_map(|v| v.servers());
        self.cfg.servers.iter().copied().chain(promised)
    }

    /// `fallbacks().all(linked)`, without the iterator adaptors: asked for every client
    /// on every turn of a host, where it showed in the profile.
    fn fallbacks_all_linked(&self) -> bool {
        self.cfg.servers.iter().all(|&a| self.linked(a))
            && self
                .promised_view
                .is_none_or(|v| v.servers().all(|a| self.linked(a)))
    }

    fn linked(&self, addr: SocketAddr) -> bool {
        self.links.iter().any(|l| l.addr == addr)
    }

    /// When no server of our view answers, or our primary's lease ran out here, dial the
    /// fallbacks too. Both replicas may have been restarted; or the primary died or
    /// stopped right after installing a view that adds a backup, before it told us, and
    /// that backup's takeover needs us as a witness though we never heard of it.
    fn look_further(&mut self, now: Instant) {
        if self.view.is_none() {
            return;
        }
        let any_up = self
            .links
            .iter()
            .any(|l| matches!(l.state, LinkState::Up(_)));
        let lapsed = match self.heard_holder {
            Some(heard) => now.saturating_duration_since(heard) >= self.lease,
            // Not heard since we adopted a view learned from another server: lapsed only
            // if we have no link to the holder either (else its next message will do).
            None => !self.lease_holder.is_some_and(|h| {
                self.links
                    .iter()
                    .any(|l| l.addr == h && matches!(l.state, LinkState::Up(_)))
            }),
        };
        if any_up && !lapsed {
            return;
        }
        let fallbacks: Vec<SocketAddr> = self.fallbacks().collect();
        for addr in fallbacks {
            if !self.linked(addr) {
                self.links.push(ServerLink {
                    addr,
                    state: LinkState::Idle { redial_at: now },
                });
            }
        }
    }

    fn on_closed(&mut self, conn: ConnId, now: Instant) {
        if let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.state == LinkState::Up(conn))
        {
            info!("server-lost client={} server={}", self.cfg.id, link.addr);
            link.state = LinkState::Idle {
                redial_at: now + self.cfg.redial,
            };
            if self.lease_holder == Some(link.addr) {
                self.heard_holder = None;
                if let Some((c, proposal)) = self.deferred.take() {
                    self.consider_proposal(c, proposal, now);
                }
            }
        }
    }

    fn on_msg(&mut self, conn: ConnId, msg: ServerMsg, now: Instant) {
        let Some(from) = self.link_addr(conn) else {
            return;
        };
        match msg {
            ServerMsg::Welcome { view, lease_ms } => {
                // The lease length is the primary's: a backup's own flags may differ.
                if (from == view.primary && !self.is_older(view)) || self.lease.is_zero() {
                    self.lease = honoured_lease(lease_ms);
                }
                self.adopt_view(conn, from, view, now);
            }
            ServerMsg::NewView { view, lease_ms } => {
                if from == view.primary && !self.is_older(view) {
                    self.lease = honoured_lease(lease_ms);
                }
                self.adopt_view(conn, from, view, now);
            }
            ServerMsg::Propose {
                view,
                base,
                recovering,
                node,
                lease_ms,
            } => self.consider_proposal(
                conn,
                Proposal {
                    view,
                    base,
                    recovering,
                    node,
                    lease_ms,
                },
                now,
            ),
            ServerMsg::Lease {
                view,
                round,
                lease_ms,
            } => {
                // The lease is exclusive: granted only to the holder (not, say, to a primary
                // we have just promised to replace).
                if self.current(conn, from, view, now) && self.lease_holder == Some(from) {
                    self.lease = honoured_lease(lease_ms);
                    self.out.push_back(ClientOutput::Send(
                        conn,
                        ClientMsg::LeaseAck { view, round },
                    ));
                }
            }
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
                    for (i, tally) in tallies.into_iter().enumerate() {
                        self.deliver(conn, Seq(first.0 + i as u64), tally);
                    }
                }
            }
            ServerMsg::Refused { view, reason } => {
                info!(
                    "refused client={} conn={conn} view={view} reason={reason}",
                    self.cfg.id
                );
            }
        }
    }

    // ----- state transitions ---------------------------------------------------------

    /// `conn` leads to the backup of the view this client follows. Nothing waits for the
    /// votes it sends there: the backup counts them as a second copy beside the primary's
    /// `Forward`, reads its clients in batches, and on a takeover gets them again in the
    /// clients' `Accept`s. So a host may hold them back and write several turns' at once.
    pub fn is_backup_link(&self, conn: ConnId) -> bool {
        self.view
            .and_then(|v| v.backup)
            .is_some_and(|backup| self.link_addr(conn) == Some(backup))
    }

    fn link_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.links
            .iter()
            .find(|l| l.state == LinkState::Up(conn))
            .map(|l| l.addr)
    }

    fn promise(&mut self, view: ViewInfo) {
        if view.number > self.promised {
            self.promised = view.number;
            self.out.push_back(ClientOutput::Promise(view));
        }
    }

    /// Whether a message tagged `view` may be acted on. One from a view older than ours
    /// comes from a replaced server: it is told so and ignored. Hearing from our primary
    /// renews its lease.
    fn current(&mut self, conn: ConnId, from: SocketAddr, view: View, now: Instant) -> bool {
        let Some(ours) = self.view else {
            return false;
        };
        if view < ours.number {
            debug!(
                "stale-message client={} from={from} view={view} ours={}",
                self.cfg.id, ours.number
            );
            self.out.push_back(ClientOutput::Send(
                conn,
                ClientMsg::Stale { accepted: ours },
            ));
            return false;
        }
        self.heard_from(conn, from, now);
        true
    }

    /// `view` is older than the one this client follows.
    fn is_older(&self, view: ViewInfo) -> bool {
        self.view.is_some_and(|ours| view.number < ours.number)
    }

    /// A current message from `from` arrived on `conn`.
    fn heard_from(&mut self, conn: ConnId, from: SocketAddr, now: Instant) {
        if self.lease_holder == Some(from) {
            self.heard_holder = Some(now);
        }
        if let Some(view) = self
            .view
            .filter(|v| self.resend_pending && v.primary == from)
        {
            self.resend_pending = false;
            self.out.push_back(ClientOutput::Send(
                conn,
                ClientMsg::Resend {
                    view: view.number,
                    from: self.last_logged.next(),
                },
            ));
        }
    }

    /// An installed view (a majority accepted it): follow it if it is newer.
    fn adopt_view(&mut self, conn: ConnId, from: SocketAddr, view: ViewInfo, now: Instant) {
        if let Some(ours) = self.view {
            if view.number < ours.number {
                self.out.push_back(ClientOutput::Send(
                    conn,
                    ClientMsg::Stale { accepted: ours },
                ));
                return;
            }
            if view.number == ours.number {
                self.heard_from(conn, from, now);
                return;
            }
        }
        info!("view-accepted client={} view={view}", self.cfg.id);
        self.view = Some(view);
        // A view below our promise does not take the lease from the proposer we promised
        // (it may be acting on it already).
        if view.number >= self.promised {
            if self.lease_holder == Some(view.primary) {
                // Its proposal, which we accepted: the lease runs from then (the primary
                // counts it so), even if the backup's Welcome told us of the view first.
                if from == view.primary {
                    self.heard_holder = Some(now);
                }
            } else {
                self.lease_holder = Some(view.primary);
                self.heard_holder = (from == view.primary).then_some(now);
            }
        }
        self.promise(view);
        // Follow the view: talk to its servers; tell anyone else they were replaced.
        let wanted: Vec<SocketAddr> = view.servers().collect();
        self.links.retain(|link| {
            let keep = wanted.contains(&link.addr);
            if let (false, LinkState::Up(c)) = (keep, link.state) {
                self.out
                    .push_back(ClientOutput::Send(c, ClientMsg::Stale { accepted: view }));
                self.out.push_back(ClientOutput::Close(c));
            }
            keep
        });
        for &addr in &wanted {
            if !self.links.iter().any(|l| l.addr == addr) {
                self.links.push(ServerLink {
                    addr,
                    state: LinkState::Idle { redial_at: now },
                });
            }
        }
        // A new primary may not know how far our log goes: tell it. (A link still to be
        // dialed says so in its hello.)
        if let Some(LinkState::Up(c)) = self
            .links
            .iter()
            .find(|l| l.addr == view.primary)
            .map(|l| l.state)
        {
            self.out.push_back(ClientOutput::Send(
                c,
                ClientMsg::Resend {
                    view: view.number,
                    from: self.last_logged.next(),
                },
            ));
        }
        self.resend_pending = from != view.primary;
        self.on_timeout(now);
    }

    /// A server asks us to accept a view in which it is primary.
    fn consider_proposal(&mut self, conn: ConnId, proposal: Proposal, now: Instant) {
        let Proposal {
            view,
            base,
            recovering,
            node,
            lease_ms,
        } = proposal;
        // A client that follows no view yet can only help a recovering server (a cold
        // restart), which asks for its log, not for a view it follows.
        let ours = match (self.view, recovering) {
            (Some(ours), _) => ours,
            (None, true) => view,
            (None, false) => return,
        };
        let reject = |retry_after_ms| ClientMsg::Reject {
            proposed: view.number,
            accepted: ours,
            promised: self.promised,
            retry_after_ms,
        };
        // A proposer whose state predates the view we follow was replaced: it may lack
        // results that view produced. A promise is never given twice for one number.
        let resent = view.number == self.promised && self.promised_to == Some(node);
        if (view.number <= self.promised && !resent) || (base < ours.number && !recovering) {
            debug!(
                "proposal-rejected client={} view={view} base={base} promised={} ours={}",
                self.cfg.id, self.promised, ours.number
            );
            self.out.push_back(ClientOutput::Send(conn, reject(None)));
            return;
        }
        // Anyone but the lease holder waits until its lease has run out here.
        if self.lease_holder.is_some_and(|h| h != view.primary) {
            if let Some(heard) = self.heard_holder {
                let age = now.saturating_duration_since(heard);
                if age < self.lease {
                    let wait = (self.lease - age).as_millis() as u64 + 1;
                    debug!(
                        "proposal-rejected client={} view={view} lease_left_ms={wait}",
                        self.cfg.id
                    );
                    self.out
                        .push_back(ClientOutput::Send(conn, reject(Some(wait))));
                    self.deferred = Some((conn, proposal));
                    return;
                }
            }
        }
        self.deferred = None;
        // The proposer counts on this client's lease for its own length from now on.
        self.lease = honoured_lease(lease_ms);
        self.promised_to = Some(node);
        self.promised_view = Some(view);
        // The proposer may act as primary as soon as a majority answered like this: from
        // now on it holds our lease.
        self.lease_holder = Some(view.primary);
        self.heard_holder = Some(now);
        info!("proposal-accepted client={} view={view}", self.cfg.id);
        self.promise(view);
        let votes = self.cast.from(self.last_logged.next()).collect();
        self.out.push_back(ClientOutput::Send(
            conn,
            ClientMsg::Accept {
                view: view.number,
                last_seq: self.last_logged,
                votes,
                tail: if recovering {
                    self.recent.iter().copied().collect()
                } else {
                    Vec::new()
                },
            },
        ));
    }

    /// Votes on ballots `first .. first + count` (those not logged yet), to every server
    /// it is linked to: one `Votes` per server for everything asked in one loop turn.
    fn vote(&mut self, view: View, first: Seq, count: u32) {
        let Some(current) = self.view else {
            return;
        };
        // No server has more ballots open than this; a larger count is not honoured.
        let count = u64::from(count).min(MAX_OPEN_BALLOTS);
        let policy = self.cfg.policy;
        let mut votes = Vec::new();
        for seq in (first.0.max(self.last_logged.0 + 1)..first.0.saturating_add(count)).map(Seq) {
            let yes = self.cast.get_or_cast(seq, |seq| policy.vote(seq.0));
            votes.push((seq, yes));
        }
        if votes.is_empty() {
            return;
        }
        debug!(
            "vote client={} first={} count={} view={view}",
            self.cfg.id,
            votes[0].0,
            votes.len()
        );
        let mut ups = self
            .links
            .iter()
            .filter(|l| matches!(l.state, LinkState::Up(_)))
            .count();
        for link in &self.links {
            let LinkState::Up(conn) = link.state else {
                continue;
            };
            ups -= 1;
            // Fold into this turn's Votes to that server if it is the last thing queued
            // for that connection (never past another message: order is kept).
            let last_to_conn = self.out.iter_mut().rev().find(|o| match o {
                ClientOutput::Send(to, _)
                | ClientOutput::Hello(to, _)
                | ClientOutput::Close(to) => *to == conn,
                ClientOutput::Dial(_) | ClientOutput::Promise(_) | ClientOutput::Append(_) => false,
            });
            match last_to_conn {
                Some(ClientOutput::Send(
                    _,
                    ClientMsg::Votes {
                        view,
                        votes: pending,
                    },
                )) if *view == current.number => {
                    pending.extend_from_slice(&votes);
                }
                _ => self.out.push_back(ClientOutput::Send(
                    conn,
                    ClientMsg::Votes {
                        view: current.number,
                        // The last link takes the list itself.
                        votes: if ups == 0 {
                            std::mem::take(&mut votes)
                        } else {
                            votes.clone()
                        },
                    },
                )),
            }
        }
    }

    fn deliver(&mut self, conn: ConnId, seq: Seq, tally: Tally) {
        if seq <= self.last_logged {
            return; // a duplicate: results are idempotent by seq
        }
        if seq != self.last_logged.next() {
            let from = self.last_logged.next();
            if self.resend_asked != Some(from) {
                warn!(
                    "result-gap client={} expected={from} got={seq}",
                    self.cfg.id
                );
                self.resend_asked = Some(from);
                self.out.push_back(ClientOutput::Send(
                    conn,
                    ClientMsg::Resend {
                        view: self.view.map_or(View(0), |v| v.number),
                        from,
                    },
                ));
            }
            return;
        }
        self.last_logged = seq;
        self.cast.logged_through(seq);
        if self.recent.len() == MAX_RECOVERY_TAIL {
            self.recent.pop_front();
        }
        self.recent.push_back(tally);
        self.out
            .push_back(ClientOutput::Append(LogLine { seq, tally }));
    }
}

#[cfg(test)]
mod tests;
