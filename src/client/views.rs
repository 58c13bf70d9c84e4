//! Views as a client weighs them: the view it follows, the promises it makes (a proposal
//! is accepted only above every number promised), the lease it honours (nobody but the
//! lease holder until the holder has been silent for a lease), and the view check every
//! server message passes.

use super::links::{LinkState, ServerLink};
use super::{Client, ClientOutput};
use crate::link::ConnId;
use crate::proto::{ClientMsg, Fingerprint, MemberRecord, NodeId, View, ViewInfo};
use log::{debug, info};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A `Propose` as the client weighs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Proposal {
    pub(super) view: ViewInfo,
    pub(super) base: View,
    pub(super) recovering: bool,
    pub(super) node: NodeId,
    pub(super) lease_ms: u64,
    pub(super) members: Fingerprint,
    pub(super) member: bool,
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

impl Client {
    pub(super) fn promise(&mut self, view: ViewInfo) {
        if view.number > self.promised() {
            self.durable.view = view.number;
            self.durable.servers = view.servers().collect();
            self.persist();
        }
    }

    /// Has what it keeps durably written before its next output.
    fn persist(&mut self) {
        self.out
            .push_back(ClientOutput::Promise(self.durable.clone()));
    }

    /// Whether a message tagged `view` may be acted on. One from a view older than ours
    /// comes from a replaced server: it is told so and ignored. Hearing from our primary
    /// renews its lease.
    pub(super) fn current(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        view: View,
        now: Instant,
    ) -> bool {
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
    pub(super) fn is_older(&self, view: ViewInfo) -> bool {
        self.view.is_some_and(|ours| view.number < ours.number)
    }

    /// A current message from `from` arrived on `conn`.
    pub(super) fn heard_from(&mut self, conn: ConnId, from: SocketAddr, now: Instant) {
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
                    from: self.log.last.next(),
                },
            ));
        }
    }

    /// An installed view (a majority accepted it), with its membership's fingerprint and
    /// whether this client is a member: follow it if it is newer.
    pub(super) fn adopt_view(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        view: ViewInfo,
        (members, member): (Fingerprint, bool),
        now: Instant,
    ) {
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
        } else if view.number < self.promised() {
            // Restarted with a promise above it: some proposal it accepted is newer, and
            // the server offering this view (a backup cut off since, say) may lack what
            // that one produced. Follow nothing older; the primary's next view comes above
            // (a hello says the promise, and a primary proposes above what clients report).
            debug!(
                "view-refused client={} view={view} promised={} reason=below-promise",
                self.cfg.id,
                self.promised()
            );
            return;
        }
        info!("view-accepted client={} view={view}", self.cfg.id);
        self.view = Some(view);
        // A view below our promise does not take the lease from the proposer we promised
        // (it may be acting on it already).
        if view.number >= self.promised() {
            if self.lease_holder == Some(view.primary) {
                // Its proposal, which we accepted: the lease runs from then (the primary
                // counts it so), even if the backup's Welcome told us of the view first.
                if from == view.primary {
                    self.heard_holder = Some(now);
                }
            } else {
                // Learned from another server (the backup's Welcome), it has not heard the
                // primary, which may be alive and counting on this client's lease: count
                // the lease from now, so no takeover is accepted before it runs out.
                self.lease_holder = Some(view.primary);
                self.heard_holder = Some(now);
            }
        }
        // What a fresh primary after a cold restart needs of it: kept only for a view this
        // client adopts, never for another server's view that happens to share its number.
        let record = Some(MemberRecord {
            view: view.number,
            members,
            member,
        });
        let recorded = self.durable.followed != record;
        self.durable.followed = record;
        if view.number > self.promised() {
            // This number was promised by adopting the view, to no proposer: a proposal
            // under it from whichever process promised the old number is no re-send.
            self.durable.proposer = None;
            self.promise(view);
        } else if recorded {
            self.persist();
        }
        self.link_to_servers_of(view, now);
        self.resend_pending = from != view.primary;
        // A new primary does not know this client wants out: ask it (a link still to be
        // dialed asks after its Welcome).
        self.ask_to_leave();
        self.on_timeout(now);
    }

    /// Follows `view`: talks to its servers, tells anyone else they were replaced, and
    /// tells its primary how far the log goes.
    fn link_to_servers_of(&mut self, view: ViewInfo, now: Instant) {
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
            match self.links.iter_mut().find(|l| l.addr == addr) {
                Some(link) => link.named_in_view(now),
                None => self.links.push(ServerLink::new(addr, now)),
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
                    from: self.log.last.next(),
                },
            ));
        }
    }

    /// Asks to leave the membership (`--until` reached, or a signal): the primary of the
    /// view it follows drops it from the next view. It goes on voting, and logging, until
    /// the primary answers `Left`; it asks each new primary again.
    pub fn leave(&mut self, now: Instant) {
        if self.leaving.is_some() {
            return;
        }
        info!(
            "client-leave client={} logged={}",
            self.cfg.id, self.log.last
        );
        self.leaving = Some(now);
        self.ask_to_leave();
    }

    /// Sends `Leave` to every server of the view it follows that it is linked to: the
    /// primary acts on it, the backup keeps it for when it takes over.
    pub(super) fn ask_to_leave(&mut self) {
        let Some(view) = self.view.filter(|_| self.leaving.is_some() && !self.left) else {
            return;
        };
        for link in &self.links {
            if let (true, LinkState::Up(conn)) =
                (view.servers().any(|s| s == link.addr), link.state)
            {
                let leave = ClientMsg::Leave { view: view.number };
                self.out.push_back(ClientOutput::Send(conn, leave));
            }
        }
    }

    /// The primary of the view it follows says its leave is agreed.
    pub(super) fn on_left(&mut self, from: SocketAddr, view: View) {
        // Not if it has promised a newer view since: that one may have taken it in again
        // (a new primary that never heard its leave), and it asks that one again.
        let ours = self
            .view
            .filter(|v| v.primary == from && view >= v.number && view >= self.promised());
        if ours.is_some() && self.leaving.is_some() && !self.left {
            info!("client-left client={} view={view}", self.cfg.id);
            self.left = true;
        }
    }

    /// A lease renewal: acknowledged only to the holder (the lease is exclusive: not, say,
    /// to a primary we have just promised to replace).
    pub(super) fn on_lease(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        view: View,
        round: u64,
        lease_ms: u64,
        now: Instant,
    ) {
        if self.current(conn, from, view, now) && self.lease_holder == Some(from) {
            self.lease = honoured_lease(lease_ms);
            self.out.push_back(ClientOutput::Send(
                conn,
                ClientMsg::LeaseAck {
                    view,
                    round,
                    logged: self.log.last,
                },
            ));
        }
    }

    /// Anyone but the lease holder waits until its lease has run out here: how many ms
    /// `proposer` must wait, if any.
    fn lease_left_for(&self, proposer: SocketAddr, now: Instant) -> Option<u64> {
        if self.lease_holder.is_none_or(|h| h == proposer) {
            return None;
        }
        let age = now.saturating_duration_since(self.heard_holder?);
        (age < self.lease).then(|| (self.lease - age).as_millis() as u64 + 1)
    }

    /// Restarted after it promised: the process it promised may hold its lease still,
    /// counting from a renewal just before the crash, for one lease (this process never
    /// learned how long: the proposal says what its servers use). Until that long after
    /// the restart, no other process gets a lease-free acceptance.
    fn restart_lease_left(&self, proposer: NodeId, lease_ms: u64, now: Instant) -> Option<u64> {
        let restarted = self.restarted_at?;
        if self.durable.proposer == Some(proposer) {
            return None;
        }
        let lease = honoured_lease(lease_ms).max(self.lease);
        let age = now.saturating_duration_since(restarted);
        (age < lease).then(|| (lease - age).as_millis() as u64 + 1)
    }

    /// A server asks us to accept a view in which it is primary.
    pub(super) fn consider_proposal(&mut self, conn: ConnId, proposal: Proposal, now: Instant) {
        let Proposal {
            view,
            base,
            recovering,
            node,
            lease_ms,
            members,
            member,
        } = proposal;
        // The proposal it promised, re-sent by the same process: accepting it again
        // promises nothing new. A promise is never given twice for one number.
        let resent = view.number == self.promised() && self.durable.proposer == Some(node);
        // What a proposal must build on: the view it follows; following none (restarted
        // with a promise, it adopts no view below it), the view it promised. That one may
        // have been installed and have told results this client never saw: it missed the
        // `NewView`, and the base check of §6 (G2) leans on clients that adopt a view
        // before its proposer's lease runs out. Judged by the view its promise file says
        // it followed, a stale backup won with restarted clients and lacked those results
        // (an adversarial review's execution). So a takeover whose base is older than a
        // majority's promise waits for a cold restart, as it did when such a client
        // answered nothing at all (it now rejects, and says its promise).
        let floor = match self.view {
            Some(ours) => ours.number,
            // The process it promised, proposing anew (a joiner it waited for went away,
            // say): its base is its own installed view, which only grows, so a base below
            // the promise says it never installed what it was promised, which only it
            // could have; and any view installed since without this client had a majority
            // that shares a client with any majority this process needs, which refuses
            // an older base. Judged by the view the promise file says it followed, as
            // before the restart; refusing stalled a membership change for good (a second
            // review's execution).
            None if self.durable.proposer == Some(node) => {
                self.durable.followed.map_or(self.promised(), |r| r.view)
            }
            None => self.promised(),
        };
        // A recovering server (a cold restart) asks for the log, not for a view followed;
        // the re-sent proposal had its base checked when first accepted.
        let base_checked = recovering || (resent && self.view.is_none());
        let reject = |retry_after_ms| ClientMsg::Reject {
            proposed: view.number,
            accepted: self.view.unwrap_or(view),
            promised: self.promised(),
            retry_after_ms,
        };
        // A proposer whose state predates the view we follow was replaced: it may lack
        // results that view produced.
        let stale_base = base < floor && !base_checked;
        if (view.number <= self.promised() && !resent) || stale_base {
            debug!(
                "proposal-rejected client={} view={view} base={base} promised={} followed={floor}",
                self.cfg.id,
                self.promised(),
            );
            self.out.push_back(ClientOutput::Send(conn, reject(None)));
            return;
        }
        if let Some(wait) = self.restart_lease_left(node, lease_ms, now) {
            debug!(
                "proposal-rejected client={} view={view} restart_lease_left_ms={wait}",
                self.cfg.id
            );
            self.out
                .push_back(ClientOutput::Send(conn, reject(Some(wait))));
            return;
        }
        if let Some(wait) = self.lease_left_for(view.primary, now) {
            debug!(
                "proposal-rejected client={} view={view} lease_left_ms={wait}",
                self.cfg.id
            );
            self.out
                .push_back(ClientOutput::Send(conn, reject(Some(wait))));
            self.deferred = Some((conn, proposal));
            return;
        }
        self.deferred = None;
        // The proposer counts on this client's lease for its own length from now on.
        self.lease = honoured_lease(lease_ms);
        self.promised_view = Some(view);
        // What a fresh primary needs is the last real proposal's membership: a recovering
        // one has none yet, and must not hide it.
        let records = (self.durable.followed, self.durable.accepted);
        let before = (self.durable.proposer, self.durable.accepted);
        self.durable.proposer = Some(node);
        if !recovering {
            self.durable.accepted = Some(MemberRecord {
                view: view.number,
                members,
                member,
            });
        }
        if view.number <= self.promised()
            && before != (self.durable.proposer, self.durable.accepted)
        {
            // A re-sent proposal: the promise stands, what it keeps with it changed.
            self.persist();
        }
        // The proposer may act as primary as soon as a majority answered like this: from
        // now on it holds our lease.
        self.lease_holder = Some(view.primary);
        self.heard_holder = Some(now);
        info!("proposal-accepted client={} view={view}", self.cfg.id);
        self.promise(view);
        let votes = self.cast.from(self.log.last.next()).collect();
        self.out.push_back(ClientOutput::Send(
            conn,
            ClientMsg::Accept {
                view: view.number,
                last_seq: self.log.last,
                votes,
                tail: if recovering {
                    self.log.recent.iter().copied().collect()
                } else {
                    Vec::new()
                },
                tail_base: self.log.before_recent,
                followed_members: records.0.filter(|_| recovering),
                promised_members: records.1.filter(|_| recovering),
            },
        ));
    }
}
