//! Client links as a server sees them: the hello (registration, the welcome, the
//! cold-restart detection), a reconnect superseding a connection, a client going away,
//! `Resend`, refusals, and messages to every client.

use super::recovery::Recovery;
use super::registry::Detached;
use super::role::{Leaving, RoleState};
use super::Node;
use crate::link::ConnId;
use crate::proto::limits::{MAX_CLIENTS, MAX_CLIENT_ID_LEN};
use crate::proto::{ClientId, HistoryDigest, PeerMsg, Seq, ServerMsg, View};
use log::{info, warn};
use std::time::Instant;

/// A client's hello as the primary weighs it.
struct ClientHello {
    id: ClientId,
    last_seq: Seq,
    view: View,
    /// Of its log, `1..=last_seq`.
    digest: HistoryDigest,
    /// Its view is newer than any this server heard of.
    foreign_view: bool,
}

impl Node {
    pub(super) fn on_client_hello(
        &mut self,
        conn: ConnId,
        id: ClientId,
        last_seq: Seq,
        view: View,
        digest: HistoryDigest,
        now: Instant,
    ) {
        if id.0.is_empty() || id.0.len() > MAX_CLIENT_ID_LEN {
            self.refuse_client(
                conn,
                format!("client id must be 1..={MAX_CLIENT_ID_LEN} bytes"),
                true,
            );
            return;
        }
        // A view no server of ours ever spoke of: the client comes from before a cold
        // restart (one that learned a view from this very primary or its backup knows no
        // newer one).
        let foreign_view = view > self.views.highest_seen();
        self.views.saw(view);
        match &self.role {
            RoleState::Joining(_) => {
                // One that holds a snapshot says which view it is from, whose primary is
                // the one to vote to: a client given only this address, which restarted
                // before it learned the others, knows no other way to find the primary
                // (and the primary could not install the view that adds this joiner
                // without that client: seed 22237). It serves nothing of the snapshot.
                if self.views.installed.number > View(0) {
                    let idx = self.registry.index_of(&id);
                    self.out.send_client(conn, self.welcome(idx));
                }
                self.refuse_client(conn, "this server is still joining".to_string(), false);
            }
            RoleState::Backup => {
                // Votes sent here are a second copy; the primary owns registration.
                match self.registry.index_of(&id) {
                    Some(idx) => {
                        self.attach_client(idx, conn);
                        // A new process under this name: a leave its predecessor asked for
                        // is void here too, or a takeover would keep it out.
                        self.registry.set_leaving(idx, false);
                    }
                    None => self.registry.note_unregistered(conn, id),
                }
                let idx = self.registry.resolve(conn);
                self.out.send_client(conn, self.welcome(idx));
                if let Some(msg) = idx.and_then(|idx| self.proposal_msg_for(idx)) {
                    self.out.send_client(conn, msg);
                }
            }
            RoleState::Primary(_) => {
                let hello = ClientHello {
                    id,
                    last_seq,
                    view,
                    digest,
                    foreign_view,
                };
                self.primary_client_hello(conn, hello, now)
            }
            RoleState::SteppedDown { .. } => {}
        }
    }

    /// The welcome for client `idx` (`None`: not registered here).
    fn welcome(&self, idx: Option<u32>) -> ServerMsg {
        ServerMsg::Welcome {
            view: self.views.installed,
            lease_ms: self.lease_ms(),
            members: self.views.fingerprint,
            member: idx.is_some_and(|idx| self.views.members.contains(idx)),
        }
    }

    /// Tells every connected client the view installed here, and each whether it is a
    /// member: two frames, each encoded once.
    pub(super) fn announce_view(&mut self) {
        let (mut members, mut others) = (Vec::new(), Vec::new());
        for (idx, conn) in self.registry.connected() {
            if self.views.members.contains(idx) {
                members.push(conn);
            } else {
                others.push(conn);
            }
        }
        let msg = |member| ServerMsg::NewView {
            view: self.views.installed,
            lease_ms: self.lease_ms(),
            members: self.views.fingerprint,
            member,
        };
        let (to_members, to_others) = (msg(true), msg(false));
        self.out.send_clients(members, to_members);
        self.out.send_clients(others, to_others);
    }

    fn primary_client_hello(&mut self, conn: ConnId, hello: ClientHello, now: Instant) {
        let ClientHello {
            id,
            last_seq,
            view,
            digest,
            foreign_view,
        } = hello;
        // Results are evidence of a cold restart, and so is a view from before this server
        // started; a view it installed itself is not (a client that joined since says the
        // view it learned here).
        let evidence = last_seq > Seq(0) || foreign_view;
        if evidence && self.may_detect_cold_restart() {
            if let Some(primary) = self.role.primary_mut() {
                warn!("cold-restart-detected client={id} last_seq={last_seq} client_view={view}");
                primary.recovery = Some(Recovery::default());
            }
        }
        if !self.role.is_recovering()
            && self.refuse_other_history(conn, &id, (last_seq, digest), view)
        {
            return;
        }
        // One that is no voter is refused before it registers, so it never joins; a voter
        // registers as ever, and is removed when it asks for the results (below).
        let voter = self.registry.index_of(&id).filter(|&i| self.is_voter(i));
        if voter.is_none()
            && !self.role.is_recovering()
            && self.lacks_unheld_results(last_seq.next())
        {
            let idx = self.registry.index_of(&id);
            return self.refuse_unavailable(conn, idx, last_seq.next(), view, now);
        }
        let Some(idx) = self.register_hello(conn, &id) else {
            return;
        };
        self.registry.note_logged(idx, last_seq);
        if let Some(recovery) = self.role.primary_mut().and_then(|p| p.recovery.as_mut()) {
            // Once recovering, every client with a log or a view reports before it acts.
            if last_seq > Seq(0) || view > View(0) {
                recovery.has_history(idx);
            }
            // Checked against the history once it is rebuilt.
            recovery.note_log(idx, (last_seq, digest), view);
        }
        if let Some(primary) = self.role.primary_mut() {
            // A new process under this name: whatever its predecessor asked is void.
            primary.leaving.remove(&idx);
        }
        self.registry.set_leaving(idx, false);
        info!(
            "client-registered client={id} idx={idx} conn={conn} last_seq={last_seq} client_view={view}"
        );
        let recovering = self.role.is_recovering();
        // A recovering server's own view means nothing to a client with history: it only
        // asks such clients to accept the view it is rebuilding.
        if !(recovering && view > View(0)) {
            self.out.send_client(conn, self.welcome(Some(idx)));
        }
        if recovering && self.views.proposal.is_none() {
            self.propose(None, now);
        } else if let Some(msg) = self.proposal_msg_for(idx) {
            self.out.send_client(conn, msg);
        }
        self.send_results_from(conn, last_seq.next(), view, now);
        self.ask_missing_votes(idx, conn);
        self.arm_open_ballot(now);
        self.catch_up_with_promise(&id, view, now);
        // A client that is no member yet joins through the next view. Only this client's
        // arrival is news here: every other change that makes a view change due (an
        // install, a leave, a removal, the proposal timer) proposes it where it happens,
        // and a look at every client per hello made n hellos cost O(n²).
        if self.is_joiner(idx) {
            self.propose_membership_change(now);
        }
    }

    /// The client's index, registering it (and telling the peer) if it is new; `None` if
    /// it was refused.
    fn register_hello(&mut self, conn: ConnId, id: &ClientId) -> Option<u32> {
        let idx = match self.registry.index_of(id) {
            Some(idx) => idx,
            None if self.registry.len() >= MAX_CLIENTS => {
                self.refuse_client(conn, format!("at most {MAX_CLIENTS} clients"), false);
                return None;
            }
            None => {
                let idx = self.register(id.clone());
                if let Some(peer) = &self.peer {
                    let view = self.views.installed.number;
                    let client = id.clone();
                    self.out
                        .send_peer(peer.conn, PeerMsg::Register { view, client });
                }
                idx
            }
        };
        self.attach_client(idx, conn);
        Some(idx)
    }

    /// A client that promised above our view follows nothing older than its promise: a
    /// view above it (the same servers and members) brings it back.
    fn catch_up_with_promise(&mut self, id: &ClientId, view: View, now: Instant) {
        let idle = self.role.primary().is_some_and(|p| {
            !p.is_recovering() && p.pending_install.is_none() && self.views.proposal.is_none()
        });
        if view > self.views.installed.number && idle {
            info!(
                "view-behind-client client={id} client_view={view} ours={}",
                self.views.installed.number
            );
            self.propose(self.views.installed.backup, now);
        }
    }

    /// Adds a client to the registry (idempotent) and returns its index.
    pub(super) fn register(&mut self, id: ClientId) -> u32 {
        let (idx, new) = self.registry.register(id);
        if new {
            self.leases.add_client();
            self.registered(idx);
        }
        idx
    }

    /// Makes `conn` the connection of client `idx`, closing one it had before.
    fn attach_client(&mut self, idx: u32, conn: ConnId) {
        if let Some(old) = self.registry.attach(idx, conn) {
            self.out.close(old, "client reconnected");
            // A client voids our lease when a connection to us closes: so do we.
            self.leases.void(idx);
        }
    }

    /// A connection closed; returns whether it was a client's.
    pub(super) fn client_conn_closed(&mut self, conn: ConnId, now: Instant) -> bool {
        if let Some(primary) = self.role.primary_mut() {
            primary.catching_up.remove(&conn);
            primary.resend_after_install.remove(&conn);
        }
        match self.registry.detach(conn, now) {
            Detached::NotAClient => false,
            Detached::Superseded => true,
            Detached::Gone(idx) => {
                // The client voids our lease when this connection closes: so do we.
                self.leases.void(idx);
                if let Some(primary) = self.role.primary_mut() {
                    // Told it may go, and gone: a later hello is a new start.
                    if matches!(primary.leaving.get(&idx), Some(Leaving::Told { .. })) {
                        primary.leaving.remove(&idx);
                    }
                }
                info!("client-gone client={} conn={conn}", self.registry.id(idx));
                if self.role.is_recovering() {
                    // The recovery may have waited only for this one's report.
                    self.send_proposal(now);
                }
                self.joiner_gone(idx, now);
                self.arm_absent_for(idx, now);
                true
            }
        }
    }

    /// "Send me every result from `from` on", from a client following view `view`.
    pub(super) fn on_resend(&mut self, conn: ConnId, view: View, from: Seq, now: Instant) {
        let ours = self.views.installed.number;
        let Some(primary) = self.role.primary_mut() else {
            return;
        };
        if view > ours {
            // The client already follows the view we are installing (the backup told it
            // first): results tagged with our older view would be dropped as stale.
            // Answer once we act in its view.
            primary.resend_after_install.insert(conn, from);
        } else {
            self.send_results_from(conn, from, view, now);
        }
    }

    pub(super) fn refuse_client(&mut self, conn: ConnId, reason: String, permanent: bool) {
        warn!("client-refused conn={conn} permanent={permanent} reason={reason}");
        let view = self.views.installed.number;
        let refused = ServerMsg::Refused {
            view,
            reason,
            permanent,
        };
        self.out.send_client(conn, refused);
        self.out.close(conn, "client refused");
    }

    /// Refuses, and says true, a client whose log (`(last seq, digest)`) is not of this
    /// history: one that goes past its last result, or holds other results at a seq it
    /// has. Both replicas died, and the fresh one recovered without this client (it was
    /// no member of the views the others recorded), or gave up what only it had logged;
    /// or the log is another cluster's. Serving it would continue it with this history's
    /// results. For good only if this server is not behind the client's `view`: one that
    /// was replaced and has not heard of it yet must not end a client its successor
    /// serves.
    pub(super) fn refuse_other_history(
        &mut self,
        conn: ConnId,
        id: &ClientId,
        (last_seq, digest): (Seq, HistoryDigest),
        view: View,
    ) -> bool {
        let committed = self.committed();
        let reason = if last_seq > committed {
            warn!("client-ahead client={id} last_seq={last_seq} committed={committed}");
            format!(
                "client-ahead: this log ends at ballot {last_seq}, past this primary's last \
                 result {committed}; it holds results this primary cannot reconstruct \
                 (a cold restart that did not wait for this client), so it cannot be continued"
            )
        } else if self
            .history
            .digest_through(last_seq)
            .is_some_and(|held| held != digest)
        {
            warn!("client-diverged client={id} last_seq={last_seq} digest={digest}");
            format!(
                "client-diverged: this log's results 1..={last_seq} are not this service's \
                 (their digest differs): it comes from a history a cold restart did not \
                 recover, so it cannot be continued"
            )
        } else {
            return false;
        };
        let permanent = view <= self.views.installed.number;
        self.refuse_client(conn, reason, permanent);
        true
    }

    /// The lease this server counts on, as every view and lease message states it.
    pub(super) fn lease_ms(&self) -> u64 {
        self.cfg.peer_timeout().as_millis() as u64
    }

    /// `msg` to every connected registered client.
    pub(super) fn broadcast(&mut self, msg: ServerMsg) {
        let conns = self.registry.connected_conns();
        self.out.send_clients(conns, msg);
    }
}
