//! The client's links to servers: which it dials, when it redials, and when it looks beyond
//! the servers of the view it follows (its `--servers`, the servers of its promise).

use super::{Client, ClientOutput};
use crate::link::ConnId;
use crate::proto::Hello;
use log::{debug, info};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum LinkState {
    /// Not connected; dial at `redial_at`.
    Idle {
        redial_at: Instant,
    },
    Dialing,
    Up(ConnId),
}

#[derive(Clone, Debug)]
pub(super) struct ServerLink {
    pub(super) addr: SocketAddr,
    pub(super) state: LinkState,
    /// Dials in a row that failed or led to a connection that did not last one redial
    /// interval: while another server answers, each doubles the wait before the next, up
    /// to `MAX_REDIAL_BACKOFF` times the interval. When a primary dies every client
    /// redials its address, and a replacement started there refuses clients while it
    /// joins: at 10,000 clients that is thousands of connections a second in the
    /// clients' and the servers' kernels, during the takeover. With no other server up,
    /// every interval: a cold restart counts on every client saying hello within the
    /// fresh primary's first-ballot wait (PROTOCOL.md §6, A2).
    failures: u32,
    up_since: Option<Instant>,
}

/// The longest wait between two dials of one server, in redial intervals (200 ms × 4 for
/// `pbvote client`: 800 ms). Below the shortest first-ballot wait of a fresh primary (1 s):
/// a client whose other link is half-open (it counts as up) still says hello within it.
const MAX_REDIAL_BACKOFF: u32 = 4;

impl ServerLink {
    /// A link to dial at once.
    pub(super) fn new(addr: SocketAddr, now: Instant) -> ServerLink {
        ServerLink {
            addr,
            state: LinkState::Idle { redial_at: now },
            failures: 0,
            up_since: None,
        }
    }

    /// The link is down: the next dial waits one interval, or more after failures in a
    /// row while `others_up` (another server's link is up).
    fn down(&mut self, redial: Duration, others_up: bool, now: Instant) {
        let lasted = self
            .up_since
            .take()
            .is_some_and(|up| now.saturating_duration_since(up) >= redial);
        self.failures = if lasted { 0 } else { self.failures + 1 };
        let doublings = self
            .failures
            .saturating_sub(1)
            .min(MAX_REDIAL_BACKOFF.ilog2());
        let wait = if others_up {
            redial * (1 << doublings)
        } else {
            redial
        };
        self.state = LinkState::Idle {
            redial_at: now + wait,
        };
    }

    /// A view names this server as in service: dial it now, whatever failed before.
    pub(super) fn named_in_view(&mut self, now: Instant) {
        self.failures = 0;
        if let LinkState::Idle { redial_at } = &mut self.state {
            *redial_at = (*redial_at).min(now);
        }
    }
}

impl Client {
    pub(super) fn on_timeout(&mut self, now: Instant) {
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

    pub(super) fn on_connected(&mut self, conn: ConnId, addr: SocketAddr, now: Instant) {
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
        link.up_since = Some(now);
        self.out.push_back(ClientOutput::Hello(
            conn,
            Hello::Client {
                id: self.cfg.id.clone(),
                last_seq: self.log.last,
                digest: self.log.digest(),
                view: self
                    .view
                    .map_or(self.promised(), |v| v.number.max(self.promised())),
            },
        ));
    }

    pub(super) fn on_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        let others_up = self.any_up();
        if let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.addr == addr && l.state == LinkState::Dialing)
        {
            debug!("client-dial-failed client={} server={addr}", self.cfg.id);
            link.down(self.cfg.redial, others_up, now);
        }
    }

    /// The addresses we were started with and the servers of the last proposal we accepted.
    pub(super) fn fallbacks(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let promised = self.promised_view.iter().flat_map(|v| v.servers());
        self.cfg.servers.iter().copied().chain(promised)
    }

    /// `fallbacks().all(linked)`, without the iterator adaptors: asked for every client
    /// on every turn of a host, where it showed in the profile.
    pub(super) fn fallbacks_all_linked(&self) -> bool {
        self.cfg.servers.iter().all(|&a| self.linked(a))
            && self
                .promised_view
                .is_none_or(|v| v.servers().all(|a| self.linked(a)))
    }

    fn any_up(&self) -> bool {
        (self.links.iter()).any(|l| matches!(l.state, LinkState::Up(_)))
    }

    pub(super) fn linked(&self, addr: SocketAddr) -> bool {
        self.links.iter().any(|l| l.addr == addr)
    }

    /// When no server of our view answers, or our primary's lease ran out here, dial the
    /// fallbacks too. Both replicas may have been restarted; or the primary died or
    /// stopped right after installing a view that adds a backup, before it told us, and
    /// that backup's takeover needs us as a witness though we never heard of it.
    pub(super) fn look_further(&mut self, now: Instant) {
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
                self.links.push(ServerLink::new(addr, now));
            }
        }
    }

    pub(super) fn on_closed(&mut self, conn: ConnId, now: Instant) {
        let others_up =
            (self.links.iter()).any(|l| matches!(l.state, LinkState::Up(c) if c != conn));
        if !others_up {
            // None answers now: what waited for a backoff is dialed within an interval.
            for link in &mut self.links {
                if let LinkState::Idle { redial_at } = &mut link.state {
                    *redial_at = (*redial_at).min(now + self.cfg.redial);
                }
            }
        }
        if let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.state == LinkState::Up(conn))
        {
            info!("server-lost client={} server={}", self.cfg.id, link.addr);
            link.down(self.cfg.redial, others_up, now);
            if self.lease_holder == Some(link.addr) {
                self.heard_holder = None;
                if let Some((c, proposal)) = self.deferred.take() {
                    self.consider_proposal(c, proposal, now);
                }
            }
        }
    }

    /// `conn` leads to the backup of the view this client follows. Nothing waits for the
    /// votes it sends there: the backup counts them as a second copy beside the primary's
    /// `Forward`, reads its clients in batches, and on a takeover gets them again in the
    /// clients' `Accept`s. So a host may hold them back and write several turns' at once.
    pub fn is_backup_link(&self, conn: ConnId) -> bool {
        self.view
            .and_then(|v| v.backup)
            .is_some_and(|backup| self.link_addr(conn) == Some(backup))
    }

    pub(super) fn link_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.links
            .iter()
            .find(|l| l.state == LinkState::Up(conn))
            .map(|l| l.addr)
    }
}
