//! The primary's leases on its clients. A client that acknowledged a renewal (or accepted
//! our proposal) sent at `t` refuses anyone else as primary until `t + lease`, so while a
//! majority's leases run nobody else can install a view: the primary may open ballots
//! and tell results. Every `heartbeat` the primary sends a numbered renewal round.

use super::membership::Members;
use super::Node;
use crate::proto::Seq;
use std::cell::Cell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The answer to "until when does a majority of the clients hold our lease?", so that
/// asking costs O(1) instead of a pass over every client: with 10,000 clients each
/// `LeaseAck` asking twice was quadratic per heartbeat (64 % of the primary's time).
#[derive(Clone, Copy, Debug, Default)]
struct LeaseCache {
    /// A majority's leases run at least until then (None: not held, or not known).
    held_until: Option<Instant>,
    /// No lease changed since `held_until` was computed. An extension (an ack, an accept)
    /// keeps `held_until` as a lower bound but makes the cache not fresh; a voided lease or
    /// a new client (a larger majority) forgets it.
    fresh: bool,
}

#[derive(Debug)]
pub struct Leases {
    length: Duration,
    /// `from[i]`: when the newest renewal client i acknowledged was sent; its lease runs
    /// until then plus `length`. Indexed like the registry.
    from: Vec<Option<Instant>>,
    cache: Cell<LeaseCache>,
    /// Whose leases count: the installed view's members.
    members: Members,
    /// Renewals sent and not yet too old to matter: (round, when sent).
    rounds: VecDeque<(u64, Instant)>,
    next_round: u64,
}

impl Leases {
    pub fn new(length: Duration) -> Leases {
        Leases {
            length,
            from: Vec::new(),
            cache: Cell::default(),
            members: Members::default(),
            rounds: VecDeque::new(),
            next_round: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.from.len()
    }

    /// From now on a majority of `members` must hold the lease.
    pub fn set_members(&mut self, members: &Members) {
        self.members = members.clone();
        self.cache.set(LeaseCache::default());
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    /// A newly registered client: no lease yet, and the majority may be larger.
    pub fn add_client(&mut self) {
        self.from.push(None);
        self.cache.set(LeaseCache::default());
    }

    /// Forgets every client (a joiner installing a snapshot registers them again).
    pub fn clear(&mut self) {
        self.from.clear();
        self.cache.set(LeaseCache::default());
    }

    /// Client `idx` voids our lease when its connection to us closes: so do we.
    pub fn void(&mut self, idx: u32) {
        self.from[idx as usize] = None;
        self.cache.set(LeaseCache::default());
    }

    /// Client `idx` acknowledged a renewal (or accepted our proposal) sent at `sent`.
    pub fn extend(&mut self, idx: u32, sent: Instant) {
        if let Some(from) = self.from.get_mut(idx as usize) {
            *from = Some(from.map_or(sent, |t| t.max(sent)));
            let mut cache = self.cache.get();
            cache.fresh = false;
            self.cache.set(cache);
        }
    }

    /// A new renewal round, sent now; at most `keep` rounds are remembered.
    pub fn new_round(&mut self, now: Instant, keep: usize) -> u64 {
        let round = self.next_round;
        self.next_round += 1;
        while self.rounds.len() >= keep {
            self.rounds.pop_front();
        }
        self.rounds.push_back((round, now));
        round
    }

    /// When round `round` was sent, if it is recent enough to extend a lease.
    pub fn sent_at(&self, round: u64) -> Option<Instant> {
        self.rounds
            .iter()
            .find(|(r, _)| *r == round)
            .map(|&(_, sent)| sent)
    }

    /// A majority of the clients hold our lease at `now`.
    pub fn held(&self, now: Instant) -> bool {
        let cache = self.cache.get();
        let held = if cache.held_until.is_some_and(|t| now < t) {
            true
        } else if cache.fresh {
            false
        } else {
            let held_until = self.majority_end();
            self.cache.set(LeaseCache {
                held_until,
                fresh: true,
            });
            held_until.is_some_and(|t| now < t)
        };
        debug_assert_eq!(held, self.majority_end().is_some_and(|t| now < t));
        held
    }

    /// When the lease of a majority of the members ends: the majority-th latest lease end.
    fn majority_end(&self) -> Option<Instant> {
        let mut ends: Vec<Instant> = self
            .members
            .iter()
            .filter_map(|idx| self.from.get(idx as usize).copied().flatten())
            .map(|t| t + self.length)
            .collect();
        // With no members nobody holds it: there is nobody to tell anything.
        let k = self.members.majority();
        if k == 0 || ends.len() < k {
            return None;
        }
        // The k-th latest end: k leases (a majority) run until then.
        let (_, kth, _) = ends.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        Some(*kth)
    }
}

impl Node {
    /// Client `idx` acknowledged lease renewal `round`, having logged through `logged`.
    pub(super) fn on_lease_ack(&mut self, idx: u32, round: u64, logged: Seq, now: Instant) {
        self.registry.note_logged(idx, logged);
        if self.has_draining_leavers() {
            self.release_leavers();
        }
        let Some(sent) = self.leases.sent_at(round) else {
            return;
        };
        let had = self.holds_lease(now);
        self.leases.extend(idx, sent);
        if !had && self.holds_lease(now) {
            // Back in charge: whatever waited for the lease may go on.
            self.commit_ready(now);
            self.arm_open_ballot(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_acks_holds_the_lease_for_one_length() {
        let now = Instant::now();
        let length = Duration::from_secs(5);
        let mut leases = Leases::new(length);
        for _ in 0..3 {
            leases.add_client();
        }
        leases.set_members(&Members::from_indexes(0..3));
        let round = leases.new_round(now, 4);
        assert_eq!(leases.sent_at(round), Some(now));
        leases.extend(0, now);
        assert!(!leases.held(now));
        leases.extend(2, now);
        assert!(leases.held(now));
        assert!(!leases.held(now + length));
        leases.void(2);
        assert!(!leases.held(now));
    }

    #[test]
    fn old_rounds_are_forgotten() {
        let now = Instant::now();
        let mut leases = Leases::new(Duration::from_secs(1));
        let first = leases.new_round(now, 2);
        leases.new_round(now, 2);
        leases.new_round(now, 2);
        assert_eq!(leases.sent_at(first), None);
    }
}
