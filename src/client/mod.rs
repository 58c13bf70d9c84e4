//! The voting client as a pure state machine, in the same shape as [`crate::node::Node`]:
//! `handle_*` inputs with `now`, [`Client::poll_output`] and [`Client::poll_timeout`].
//!
//! The order of [`ClientOutput`]s is the durability order: an `Append` comes before every
//! output that depends on it, and the caller must finish writing the line to the log
//! before it performs the next output.

pub mod policy;

use crate::ballot_log::LogLine;
use crate::link::ConnId;
use crate::proto::{ClientId, ClientMsg, Hello, Seq, ServerMsg, Tally, View, ViewInfo};
use log::{debug, info, warn};
use policy::Policy;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

#[derive(Clone, Debug, PartialEq)]
pub enum ClientOutput {
    Dial(SocketAddr),
    Hello(ConnId, Hello),
    Send(ConnId, ClientMsg),
    Close(ConnId),
    /// Append this line to the log, and have it written before the next output.
    Append(LogLine),
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
    /// The newest view accepted; `None` before the first `Welcome`.
    view: Option<ViewInfo>,
    links: Vec<ServerLink>,
    /// Votes cast on ballots not yet logged, so a re-ask gets the same answer.
    cast: BTreeMap<Seq, bool>,
    /// The first seq of the last `Resend` we asked for, so one gap is asked once.
    resend_asked: Option<Seq>,
    out: VecDeque<ClientOutput>,
}

impl Client {
    /// A client whose log already holds 1..=`last_logged`.
    pub fn new(cfg: ClientConfig, last_logged: Seq, now: Instant) -> Client {
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
            links,
            cast: BTreeMap::new(),
            resend_asked: None,
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

    /// The log holds every ballot up to `--until`.
    pub fn is_done(&self) -> bool {
        self.cfg.until.is_some_and(|u| self.last_logged >= u)
    }

    // ----- polls ---------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.links
            .iter()
            .filter_map(|l| match l.state {
                LinkState::Idle { redial_at } => Some(redial_at),
                LinkState::Dialing | LinkState::Up(_) => None,
            })
            .min()
    }

    // ----- inputs --------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        for link in &mut self.links {
            if let LinkState::Idle { redial_at } = link.state {
                if redial_at <= now {
                    link.state = LinkState::Dialing;
                    self.out.push_back(ClientOutput::Dial(link.addr));
                }
            }
        }
    }

    pub fn handle_connected(&mut self, conn: ConnId, addr: SocketAddr, _now: Instant) {
        let Some(link) = self.links.iter_mut().find(|l| l.addr == addr) else {
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
                view: self.view.map_or(View(0), |v| v.number),
            },
        ));
    }

    pub fn handle_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(link) = self.links.iter_mut().find(|l| l.addr == addr) {
            debug!("client-dial-failed client={} server={addr}", self.cfg.id);
            link.state = LinkState::Idle {
                redial_at: now + self.cfg.redial,
            };
        }
    }

    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        if let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.state == LinkState::Up(conn))
        {
            info!("server-lost client={} server={}", self.cfg.id, link.addr);
            link.state = LinkState::Idle {
                redial_at: now + self.cfg.redial,
            };
        }
    }

    pub fn handle_msg(&mut self, conn: ConnId, msg: ServerMsg, now: Instant) {
        match msg {
            ServerMsg::Welcome { view } | ServerMsg::NewView { view } => {
                self.accept_view(view, now)
            }
            ServerMsg::VoteRequest { view, seq } => self.vote(view, seq),
            ServerMsg::Result {
                view: _,
                seq,
                tally,
            } => self.deliver(conn, seq, tally),
            ServerMsg::Results {
                view: _,
                first,
                tallies,
            } => {
                for (i, tally) in tallies.into_iter().enumerate() {
                    self.deliver(conn, Seq(first.0 + i as u64), tally);
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

    fn accept_view(&mut self, view: ViewInfo, now: Instant) {
        if self.view.is_some_and(|v| v.number >= view.number) {
            return;
        }
        info!("view-accepted client={} view={view}", self.cfg.id);
        self.view = Some(view);
        // Follow the view: talk to its servers, drop links to anyone else.
        let wanted: Vec<SocketAddr> = view.servers().collect();
        self.links.retain(|link| {
            let keep = wanted.contains(&link.addr);
            if !keep {
                if let LinkState::Up(conn) = link.state {
                    self.out.push_back(ClientOutput::Close(conn));
                }
            }
            keep
        });
        for addr in wanted {
            if !self.links.iter().any(|l| l.addr == addr) {
                self.links.push(ServerLink {
                    addr,
                    state: LinkState::Idle { redial_at: now },
                });
            }
        }
        self.handle_timeout(now);
    }

    fn vote(&mut self, view: View, seq: Seq) {
        if seq <= self.last_logged {
            return;
        }
        let policy = self.cfg.policy;
        let yes = *self.cast.entry(seq).or_insert_with(|| policy.vote(seq.0));
        let Some(current) = self.view else {
            return;
        };
        debug!(
            "vote client={} seq={seq} yes={yes} view={view}",
            self.cfg.id
        );
        for link in &self.links {
            if let LinkState::Up(conn) = link.state {
                self.out.push_back(ClientOutput::Send(
                    conn,
                    ClientMsg::Vote {
                        view: current.number,
                        seq,
                        yes,
                    },
                ));
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
        self.cast.remove(&seq);
        self.out
            .push_back(ClientOutput::Append(LogLine { seq, tally }));
    }
}
