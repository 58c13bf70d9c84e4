//! The committed results a server holds, and the primary's catch-up of clients that lack
//! some: a client's hello (`last_seq`) or `Resend` starts one, and it goes out a burst at
//! a time.

use super::role::{Removal, RemovalReason, RoleState};
use super::Node;
use crate::link::ConnId;
use crate::proto::limits::{
    CATCHUP_BURST, MAX_RESULTS_HELD, MAX_RESULTS_PER_FRAME, RESULTS_TRIM_STEP,
};
use crate::proto::{HistoryDigest, Seq, ServerMsg, Tally, View};
use log::warn;
use std::time::Instant;

/// Final results: `results[i]` is ballot `first + i`, and `digests[i]` the digest of the
/// history through it. Only a primary rebuilt by a cold restart (or a backup that joined
/// it) starts above 1.
#[derive(Debug)]
pub struct History {
    first: u64,
    results: Vec<Tally>,
    /// The digest of the history before `first`.
    base: HistoryDigest,
    digests: Vec<HistoryDigest>,
}

impl Default for History {
    fn default() -> History {
        History {
            first: 1,
            results: Vec::new(),
            base: HistoryDigest::EMPTY,
            digests: Vec::new(),
        }
    }
}

impl History {
    /// The seq of the first result held.
    pub fn first(&self) -> u64 {
        self.first
    }

    pub fn results(&self) -> &[Tally] {
        &self.results
    }

    /// The digest of the history before the first result held.
    pub fn base(&self) -> HistoryDigest {
        self.base
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// The last ballot whose result is final.
    pub fn committed(&self) -> Seq {
        Seq(self.first - 1 + self.results.len() as u64)
    }

    /// The digest of the history `1..=seq`, if this server can tell it (`seq` from the one
    /// before the first held to the last).
    pub fn digest_through(&self, seq: Seq) -> Option<HistoryDigest> {
        match seq.0.checked_sub(self.first) {
            None if seq.0 + 1 == self.first => Some(self.base),
            None => None,
            Some(i) => self.digests.get(usize::try_from(i).ok()?).copied(),
        }
    }

    /// Replaces the whole history (a snapshot, or the tail a cold restart rebuilt):
    /// `results` from `first` on, after a history whose digest is `base`.
    pub fn restore(&mut self, first: u64, results: Vec<Tally>, base: HistoryDigest) {
        self.first = first.max(1);
        self.base = base;
        self.digests.clear();
        let mut digest = base;
        for (i, &tally) in results.iter().enumerate() {
            digest = digest.then(Seq(self.first + i as u64), tally);
            self.digests.push(digest);
        }
        self.results = results;
    }

    /// Appends a final result; the oldest ones beyond `MAX_RESULTS_HELD` are let go, so the
    /// history (and a joiner's snapshot) stays bounded however long the cluster runs.
    pub fn record(&mut self, tally: Tally) {
        let last = self.digests.last().copied().unwrap_or(self.base);
        self.digests.push(last.then(self.committed().next(), tally));
        self.results.push(tally);
        // Trimmed in steps, not one at a time: each trim moves the whole history.
        if self.results.len() > MAX_RESULTS_HELD + RESULTS_TRIM_STEP {
            let drop = self.results.len() - MAX_RESULTS_HELD;
            self.base = self.digests[drop - 1];
            self.results.drain(..drop);
            self.digests.drain(..drop);
            self.first += drop as u64;
        }
    }
}

impl Node {
    /// Starts (or moves on) the catch-up of a client that lacks results from `from` on.
    /// `client_view`: the view the client says it follows (its hello's, its `Resend`'s).
    pub(super) fn send_results_from(
        &mut self,
        conn: ConnId,
        from: Seq,
        client_view: View,
        now: Instant,
    ) {
        let Some(primary) = self.role.primary_mut() else {
            return;
        };
        if primary.is_recovering() {
            return;
        }
        let from = Seq(from.0.max(1));
        match primary.catching_up.get(&conn) {
            // Already under way and past `from`: those results are on their way (a client
            // asks again on every gap it sees meanwhile).
            Some(&next) if next >= from => return,
            _ => {}
        }
        if self.lacks_unheld_results(from) {
            let idx = self.registry.resolve(conn);
            return self.refuse_unavailable(conn, idx, from, client_view, now);
        }
        if let Some(primary) = self.role.primary_mut() {
            primary.catching_up.insert(conn, from);
        }
        self.continue_catch_up(conn);
    }

    /// Whether client `idx` is a member, in the view on its way, or awaited by a ballot.
    pub(super) fn is_voter(&self, idx: u32) -> bool {
        let proposed = (self.views.proposal.as_ref()).is_some_and(|p| p.members.contains(idx));
        self.views.members.contains(idx) || proposed || self.awaited(idx)
    }

    /// Whether a client whose log needs results from `from` on lacks some that this server
    /// no longer holds (trimmed past [`MAX_RESULTS_HELD`], or older than the tail a cold
    /// restart recovered).
    pub(super) fn lacks_unheld_results(&self, from: Seq) -> bool {
        from.0 < self.history.first && from <= self.history.committed()
    }

    /// A client whose log cannot be completed (it would miss the results no server holds)
    /// is refused for good. A member, or one a ballot waits for, is first removed (no
    /// ballot may wait for a voter that cannot go on), and refused once a view without it
    /// is installed: until then it stays linked, a witness that view may need.
    pub(super) fn refuse_unavailable(
        &mut self,
        conn: ConnId,
        idx: Option<u32>,
        from: Seq,
        client_view: View,
        now: Instant,
    ) {
        let first_held = Seq(self.history.first);
        let name = idx.map_or("?".to_string(), |i| self.registry.id(i).to_string());
        warn!("results-unavailable client={name} conn={conn} from={from} first_held={first_held}");
        let reason = format!(
            "results-unavailable: this log ends at ballot {}, and the results from {from} to {} \
             are no longer held (the servers keep the last {MAX_RESULTS_HELD}; after a cold \
             restart, only what the clients' logs held), so this log cannot be completed",
            from.0 - 1,
            first_held.0 - 1
        );
        let Some(idx) = idx.filter(|&idx| self.is_voter(idx)) else {
            // A server behind the client may be a replaced one: its word is not final.
            let permanent = client_view <= self.views.installed.number;
            return self.refuse_client(conn, reason, permanent);
        };
        // A voter is removed whatever view it reports: refused at once it would not
        // witness the removal, and not removed it would hold every ballot up. The refusal
        // goes, to whichever connection it has then, in a view newer than any it said.
        if let Some(primary) = self.role.primary_mut() {
            let removal = primary.removing.entry(idx).or_insert_with(|| {
                warn!("client-removing client={name} by=results-unavailable");
                Removal {
                    reason: RemovalReason::ResultsUnavailable,
                    ..Removal::default()
                }
            });
            removal.refuse = Some(reason);
        }
        self.propose_membership_change(now);
    }

    /// Sends the next burst of a catch-up: at most `CATCHUP_BURST` frames, then waits for
    /// the connection to drain. All at once, a client far behind overflowed its output
    /// buffer (4 MiB, ~400,000 results), was cut, reconnected and started over.
    pub(super) fn continue_catch_up(&mut self, conn: ConnId) {
        let last = self
            .registry
            .resolve(conn)
            .and_then(|idx| self.last_result_for(idx));
        let RoleState::Primary(primary) = &mut self.role else {
            return;
        };
        let Some(&next) = primary.catching_up.get(&conn) else {
            return;
        };
        let history = &self.history;
        let mut start = next.0.max(history.first) - history.first;
        let mut held = history.results.len() as u64;
        if let Some(last) = last {
            held = held.min((last.0 + 1).saturating_sub(history.first));
        }
        for _ in 0..CATCHUP_BURST {
            if start >= held {
                break;
            }
            let end = (start + MAX_RESULTS_PER_FRAME as u64).min(held);
            self.out.send_client(
                conn,
                ServerMsg::Results {
                    view: self.views.installed.number,
                    first: Seq(history.first + start),
                    tallies: history.results[start as usize..end as usize].to_vec(),
                },
            );
            start = end;
        }
        if start < held {
            primary.catching_up.insert(conn, Seq(history.first + start));
            self.out.push(super::Output::WhenDrained(conn));
        } else {
            primary.catching_up.remove(&conn);
        }
    }
}
