//! A cold restart: a fresh primary found clients with history (both replicas had died).
//! It rebuilds the results from the tails of the clients' logs, which their `Accept`s
//! carry, and the membership from what each client recorded of it, before it acts;
//! docs/PROTOCOL.md §9.

use super::membership::Members;
use crate::proto::limits::MAX_RECOVERY_TAIL;
use crate::proto::{ClientId, Fingerprint, HistoryDigest, MemberRecord, Seq, Tally, View};
use log::{info, warn};
use std::collections::BTreeMap;

/// What an `Accept` tells a recovering proposer: the client's log tail and what it
/// recorded of the memberships.
#[derive(Debug)]
pub struct Report {
    pub tail: Vec<Tally>,
    /// The digest of the client's log before `tail`.
    pub tail_base: HistoryDigest,
    pub followed: Option<MemberRecord>,
    pub promised: Option<MemberRecord>,
}

/// What the clients reported so far: the longest log tail, and the memberships.
#[derive(Debug, Default)]
pub struct Recovery {
    /// `(its last seq, its tallies, the digest of the log before them)`.
    longest: Option<(Seq, Vec<Tally>, HistoryDigest)>,
    /// The newest view any client follows: installed, so its members are needed.
    followed: View,
    /// Each membership a client recorded (of the view it follows or of a proposal it
    /// accepted), by view and fingerprint: the clients that say they are in it.
    claims: BTreeMap<(View, Fingerprint), Claim>,
    /// Every client that reported: a membership's members that do not claim it are
    /// found among these by the membership's fingerprint.
    reporters: BTreeMap<u32, Reporter>,
    /// The clients that said hello with history: each reports before the fresh primary
    /// acts, while it is connected (its log may be the longest).
    with_history: Members,
    /// The names' hashes of clients an operator removed meanwhile (gone for good): they
    /// count as present for completing a membership, and are no member of the result.
    removed: Vec<NameHashes>,
    /// What each client that said hello said of its log (its last seq and digest) and of
    /// its view: checked against the rebuilt history once installed, as a hello is then.
    logs: BTreeMap<u32, ((Seq, HistoryDigest), View)>,
}

/// The most subsets of the silent clients tried when completing one membership: a member
/// that never recorded a view (it was down while that view was installed, or promised a
/// newer proposal without following it) cannot say it is in it, but the view's
/// fingerprint can still tell which of the silent ones it is.
const MAX_SUBSETS_TRIED: u64 = 10_000;

/// What the fresh primary knows of a client that reported, for completing memberships.
#[derive(Debug)]
struct Reporter {
    /// Its name's share of a fingerprint.
    hashes: NameHashes,
    /// The newest view it recorded anything of.
    newest: View,
    /// The memberships it recorded as one it is not in: never a candidate for them.
    outside: Vec<(View, Fingerprint)>,
}

/// A name's share of a fingerprint (or a sum of them) in each hash a record may have been
/// made with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NameHashes([u64; 2]);

impl NameHashes {
    fn of(id: &ClientId) -> NameHashes {
        NameHashes([false, true].map(|mixed| Fingerprint::name_hash(id, mixed)))
    }

    fn get(&self, mixed: bool) -> u64 {
        self.0[usize::from(mixed)]
    }

    fn plus(self, other: NameHashes) -> NameHashes {
        NameHashes([0, 1].map(|k| self.0[k].wrapping_add(other.0[k])))
    }
}

#[derive(Debug, Default)]
struct Claim {
    /// Some client follows this view: it was installed.
    followed: bool,
    members: Members,
    /// How many claimants, and the sums of their names' hashes in each hash: equal to
    /// the recorded fingerprint once every member is here.
    count: u32,
    digests: NameHashes,
}

impl Claim {
    /// Every member says so. A record without `mixed` was made with bare FNV-1a, or by a
    /// client from before session 11 that kept a newer server's mixed digest without the
    /// flag: either sum matches it.
    fn says_all(&self, of: Fingerprint) -> bool {
        let digest = self.digests.get(of.mixed);
        let unflagged_mixed = !of.mixed && self.digests.get(true) == of.digest;
        self.count == of.count && (digest == of.digest || unflagged_mixed)
    }
}

impl Recovery {
    /// Keeps the longest log tail a client reported; the clients' logs must agree.
    pub fn add_tail(&mut self, last_seq: Seq, mut tail: Vec<Tally>, mut base: HistoryDigest) {
        // A tail past the last seq there is, or longer than the log it ends, is no log of
        // ours (found by the `server_core` fuzz target: it overflowed).
        if last_seq.0 == u64::MAX || tail.len() as u64 > last_seq.0 {
            warn!("recovery-tail-ignored last_seq={last_seq} reason=not-a-log-tail");
            return;
        }
        if tail.len() > MAX_RECOVERY_TAIL {
            let cut = tail.len() - MAX_RECOVERY_TAIL;
            let cut_first = Seq(last_seq.0 + 1 - tail.len() as u64);
            base = base.over(cut_first, tail.drain(..cut));
        }
        let tail_first = last_seq.0 + 1 - tail.len() as u64;
        if let Some((best_last, best, _)) = &self.longest {
            let best_first = best_last.0 + 1 - best.len() as u64;
            for (i, tally) in tail.iter().enumerate() {
                let seq = tail_first + i as u64;
                let held = (best_first..=best_last.0).contains(&seq);
                if held && best[(seq - best_first) as usize] != *tally {
                    warn!("recovery-conflict seq={seq} logs disagree");
                }
            }
            if last_seq <= *best_last {
                return;
            }
        }
        self.longest = Some((last_seq, tail, base));
    }

    /// Client `idx` (named `id`) reported what it recorded of the membership of the view
    /// it follows and of the last proposal it accepted.
    pub fn add_records(
        &mut self,
        idx: u32,
        id: &ClientId,
        followed: Option<MemberRecord>,
        promised: Option<MemberRecord>,
    ) {
        if let Some(f) = followed {
            self.followed = self.followed.max(f.view);
        }
        let records = followed.into_iter().chain(promised);
        let reporter = Reporter {
            hashes: NameHashes::of(id),
            newest: records.clone().map(|r| r.view).max().unwrap_or_default(),
            outside: (records.filter(|r| !r.member))
                .map(|r| (r.view, r.members))
                .collect(),
        };
        self.reporters.insert(idx, reporter);
        let records = followed.map(|r| (r, true)).into_iter();
        for (record, installed) in records.chain(promised.map(|r| (r, false))) {
            let claim = (self.claims.entry((record.view, record.members))).or_default();
            claim.followed |= installed;
            if record.member && !claim.members.contains(idx) {
                claim.members.insert(idx);
                claim.count = claim.count.saturating_add(1);
                claim.digests = claim.digests.plus(NameHashes::of(id));
            }
            info!(
                "cold-restart-membership view={} present={}/{}",
                record.view,
                claim.members.len(),
                record.members.count
            );
        }
    }

    /// The memberships that must be whole before the fresh primary acts: that of the
    /// newest view a client follows, and of every proposal at least as new (any may have
    /// been installed since, and its members may hold results nobody else logged).
    fn required(&self) -> impl Iterator<Item = (&(View, Fingerprint), &Claim)> {
        self.claims.range((self.followed, Fingerprint::default())..)
    }

    /// The members of `view`'s membership with fingerprint `of`, if all are here: the
    /// ones that say so, and of the other clients that reported, those whose names make
    /// up the rest of the fingerprint. First among those that recorded nothing as new
    /// (down while the view was installed); then among every other that did not record
    /// this membership as one it is not in. A member may not say so though it heard of
    /// newer views: it records only the view it follows and the proposal it promised, and
    /// it may have promised a newer proposal while following an older view than this one,
    /// which was installed without it (simulator seed 99277). The first search keeps the
    /// candidates few at 10,000 clients; the second finds such a member. A record made
    /// with bare FNV-1a hashes is never searched: their sums match for other names too
    /// (h(c1) + h(c2) = h(c0) + h(c3)), so only its members saying so make it whole.
    fn whole(&self, view: View, of: Fingerprint, claim: &Claim) -> Option<Members> {
        if claim.says_all(of) {
            return Some(claim.members.clone());
        }
        if !of.mixed {
            return None;
        }
        let silent = |older_only: bool| {
            (self.reporters.iter())
                .filter(|(idx, _)| !claim.members.contains(**idx))
                .filter(|(_, r)| !older_only || r.newest < view)
                .filter(|(_, r)| !r.outside.contains(&(view, of)))
                // A client with no log and no record is new: it joins afterwards.
                .filter(|(idx, r)| r.newest > View(0) || self.with_history.contains(**idx))
                .map(|(&idx, r)| (Some(idx), r.hashes.get(of.mixed)))
                .chain(self.removed.iter().map(|h| (None, h.get(of.mixed))))
                .collect::<Vec<_>>()
        };
        (self.complete(of, claim, silent(true))).or_else(|| self.complete(of, claim, silent(false)))
    }

    /// `claim`'s members and those of `silent` whose hashes make up the rest of `of`.
    fn complete(
        &self,
        of: Fingerprint,
        claim: &Claim,
        silent: Vec<(Option<u32>, u64)>,
    ) -> Option<Members> {
        let missing = of.count.checked_sub(claim.count)? as usize;
        let rest = of.digest.wrapping_sub(claim.digests.get(of.mixed));
        if missing == 0
            || missing > silent.len()
            || subsets(silent.len(), missing) > MAX_SUBSETS_TRIED
        {
            return None;
        }
        // Choose the smaller side: the silent members, or the silent ones that are not
        // (their hashes make up the rest of all of theirs). With at most 10,000 subsets
        // that side is small, and so is the search's depth.
        let total = silent
            .iter()
            .fold(0u64, |sum, &(_, hash)| sum.wrapping_add(hash));
        let members = if missing * 2 <= silent.len() {
            first_subset(&silent, missing, rest)?
        } else {
            let others = first_subset(&silent, silent.len() - missing, total.wrapping_sub(rest))?;
            (silent.iter())
                .map(|&(idx, _)| idx)
                .filter(|idx| !others.contains(idx))
                .collect()
        };
        Some(claim.members.union(members.into_iter().flatten()))
    }

    /// Every required membership is whole, and there is one: the recovered members.
    ///
    /// From the newest down: a membership older than a whole, newer one that some client
    /// follows (so it was installed) may stay short once the fresh primary has waited as
    /// long as for ballot 1 (every client still running has said hello by then). Its
    /// missing members are then ones the installed view left out: a leaver told `Left`
    /// that exited, or one removed.
    fn recovered(&self, settled: bool) -> Option<Members> {
        let required: Vec<_> = self.required().collect();
        let mut members = Members::default();
        let (mut any, mut installed) = (false, false);
        for &(&(view, of), claim) in required.iter().rev() {
            match self.whole(view, of, claim) {
                Some(whole) => {
                    members = members.union(whole.iter());
                    any = true;
                    installed |= claim.followed;
                }
                None if installed && settled => break,
                None => return None,
            }
        }
        // An operator removed it: no member, even if it reported.
        for (&idx, reporter) in &self.reporters {
            if self.removed.contains(&reporter.hashes) {
                members.remove(idx);
            }
        }
        any.then_some(members)
    }

    /// An operator removed client `id` (gone for good): a membership that lacks only it
    /// is whole without it.
    pub fn remove(&mut self, id: &ClientId) {
        let hashes = NameHashes::of(id);
        if !self.removed.contains(&hashes) {
            self.removed.push(hashes);
        }
    }

    /// Client `idx` said hello with a log or a view.
    pub fn has_history(&mut self, idx: u32) {
        self.with_history.insert(idx);
    }

    /// Every required membership has all its members here, and every client with history
    /// that `connected` says is still here has reported. `settled`: the fresh primary has
    /// waited as long as it waits for ballot 1 (see [`Recovery::recovered`]).
    pub fn is_complete(&self, connected: impl Fn(u32) -> bool, settled: bool) -> bool {
        let unheard = (self.with_history.iter())
            .any(|idx| connected(idx) && !self.reporters.contains_key(&idx));
        !unheard && self.recovered(settled).is_some()
    }

    /// The first membership still incomplete: `(view, present, members)`.
    pub fn waiting_for(&self) -> Option<(View, u32, u32)> {
        self.required()
            .find(|(&(view, of), claim)| self.whole(view, of, claim).is_none())
            .map(|((view, fp), claim)| (*view, claim.members.len() as u32, fp.count))
    }

    /// The recovered membership: every member of a required membership.
    pub fn members(&self, settled: bool) -> Members {
        self.recovered(settled).unwrap_or_default()
    }

    /// Client `idx` said hello with this log end, following or having promised `view`.
    pub fn note_log(&mut self, idx: u32, log: (Seq, HistoryDigest), view: View) {
        self.logs.insert(idx, (log, view));
    }

    /// The rebuilt history (`(first seq, tallies, the digest before them)`, if any client
    /// had one), and what each client said of its log.
    #[allow(clippy::type_complexity)]
    pub fn into_results(
        self,
    ) -> (
        Option<(u64, Vec<Tally>, HistoryDigest)>,
        BTreeMap<u32, ((Seq, HistoryDigest), View)>,
    ) {
        let history = self
            .longest
            .map(|(last, tail, base)| (last.0 + 1 - tail.len() as u64, tail, base));
        (history, self.logs)
    }
}

/// How many ways to choose `k` of `n`, or `u64::MAX` if more. (Saturating and then
/// dividing came out 0 for 190 of 200, which let a search of 10^16 subsets start: found
/// in review.)
fn subsets(n: usize, k: usize) -> u64 {
    let (n, k) = (n as u64, k.min(n.saturating_sub(k)) as u64);
    let mut ways = 1u64;
    for i in 0..k {
        // Exact at each step: ways * (n - i) is (i + 1) times C(n, i + 1).
        match ways.checked_mul(n - i) {
            Some(product) => ways = product / (i + 1),
            None => return u64::MAX,
        }
    }
    ways
}

/// The first `k` of `candidates` whose hashes add up to `rest`.
fn first_subset(
    candidates: &[(Option<u32>, u64)],
    k: usize,
    rest: u64,
) -> Option<Vec<Option<u32>>> {
    if k == 0 {
        return (rest == 0).then(Vec::new);
    }
    for (i, &(idx, hash)) in candidates.iter().enumerate() {
        if candidates.len() - i < k {
            break;
        }
        if let Some(mut found) = first_subset(&candidates[i + 1..], k - 1, rest.wrapping_sub(hash))
        {
            found.push(idx);
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `server_core` fuzz target: an `Accept` whose `last_seq` is the last
    /// seq there is overflowed the tail arithmetic.
    #[test]
    fn a_tail_past_the_last_seq_is_ignored_not_a_panic() {
        let mut recovery = Recovery::default();
        let tally = Tally { yes: 1, no: 0 };
        let base = HistoryDigest::EMPTY;
        recovery.add_tail(Seq(u64::MAX), vec![tally], base);
        recovery.add_tail(Seq(3), vec![tally; 100], base);
        recovery.add_tail(Seq(u64::MAX - 1), vec![tally; 2], base);
    }

    fn record(view: u64, members: Fingerprint, member: bool) -> Option<MemberRecord> {
        Some(MemberRecord {
            view: View(view),
            members,
            member,
        })
    }

    fn names(n: usize) -> Vec<ClientId> {
        (0..n).map(|i| ClientId(format!("c{i}"))).collect()
    }

    /// c0 and c3, members of {c0, c3, c4} that were down, report `followed`: now the
    /// membership is whole, and it is exactly those three.
    fn back_they_complete_it(
        recovery: &mut Recovery,
        ids: &[ClientId],
        followed: Option<MemberRecord>,
    ) {
        for i in [0, 3] {
            recovery.add_records(i, &ids[i as usize], followed, None);
        }
        assert!(recovery.is_complete(|_| true, false));
        let recovered: Vec<u32> = recovery.members(false).iter().collect();
        assert_eq!(recovered, vec![0, 3, 4]);
    }

    /// Simulator seed 99277 (of a build whose lease renewals leave at once when the lease
    /// would lapse): the old primary, paused, came back and proposed views 4 and 5 while
    /// its backup installed its own view 4 with three of the five; then both servers died.
    /// c1 followed view 3 and promised 5: a member of the installed view 4 that recorded
    /// nothing of it, though it heard of a newer view. It is here, so view 4 is whole.
    #[test]
    fn a_member_that_skipped_the_installed_view_completes_it() {
        let ids = names(5);
        let all = Fingerprint::of(&ids);
        let mut recovery = Recovery::default();
        for i in [0, 3, 4] {
            recovery.add_records(i, &ids[i as usize], record(4, all, true), None);
        }
        recovery.add_records(2, &ids[2], record(4, all, true), record(5, all, true));
        assert!(!recovery.is_complete(|_| true, false));
        recovery.add_records(1, &ids[1], record(3, all, true), record(5, all, true));
        assert!(recovery.is_complete(|_| true, false));
        assert_eq!(recovery.members(false).len(), ids.len());
    }

    /// Names that differ in their last byte have bare FNV-1a hashes whose sums match:
    /// h(c1) + h(c2) = h(c0) + h(c3), as fingerprints recorded before session 11 summed
    /// them. View 4 is {c0, c3, c4}; c1 and c2 follow it as clients that are not members.
    /// With c0 and c3 down, c1 and c2 must not stand in for them: they recorded the
    /// membership as one they are not in, or they are new clients that recorded nothing
    /// (found in review).
    #[test]
    fn clients_that_recorded_a_membership_as_outsiders_never_complete_it() {
        let ids = names(5);
        let h = |i: usize| Fingerprint::name_hash(&ids[i], false);
        assert_eq!(
            h(1).wrapping_add(h(2)),
            h(0).wrapping_add(h(3)),
            "the collision this test guards against"
        );
        let mut members = Fingerprint {
            mixed: false,
            ..Fingerprint::EMPTY
        };
        for i in [0, 3, 4] {
            members.add(&ids[i]);
        }
        let mut recovery = Recovery::default();
        recovery.add_records(4, &ids[4], record(4, members, true), None);
        for i in [1, 2] {
            recovery.add_records(i, &ids[i as usize], record(4, members, false), None);
        }
        assert!(!recovery.is_complete(|_| true, false));
        assert!(!recovery.is_complete(|_| true, true));
        // A bare record is never searched: c0 and c3 back but silent about view 4 (their
        // newest record older) do not complete it either; saying so, they do.
        let mut silent = Recovery::default();
        silent.add_records(4, &ids[4], record(4, members, true), None);
        for i in [0, 3] {
            silent.add_records(i, &ids[i as usize], record(3, members, true), None);
        }
        assert!(!silent.is_complete(|_| true, true));
        back_they_complete_it(&mut recovery, &ids, record(4, members, true));

        // Nor do new clients, with no log and no record, while c0 and c3 are down.
        let mut recovery = Recovery::default();
        recovery.add_records(4, &ids[4], record(4, members, true), None);
        for i in [1, 2] {
            recovery.add_records(i, &ids[i as usize], None, None);
        }
        assert!(!recovery.is_complete(|_| true, true));
    }

    /// A client from before session 11 keeps a newer server's mixed digest without the
    /// flag: once every member says so, the membership is whole all the same.
    #[test]
    fn an_unflagged_mixed_record_is_whole_when_every_member_says_so() {
        let ids = names(3);
        let unflagged = Fingerprint {
            mixed: false,
            ..Fingerprint::of(&ids)
        };
        let mut recovery = Recovery::default();
        for i in [0, 1] {
            recovery.add_records(i, &ids[i as usize], record(4, unflagged, true), None);
        }
        assert!(!recovery.is_complete(|_| true, true));
        recovery.add_records(2, &ids[2], record(4, unflagged, true), None);
        assert!(recovery.is_complete(|_| true, false));
        assert_eq!(recovery.members(false).len(), 3);
    }

    /// The same collision where no rule about records helps (second review): view 7 was
    /// {c0..c4}; c1 and c2 were removed, and view 8 = {c0, c3, c4} installed without
    /// them, so their newest record is of view 7. With c0 and c3 down, bare FNV-1a sums
    /// let c1 and c2 complete view 8; the mixed hashes fingerprints are made with now do
    /// not.
    #[test]
    fn removed_clients_with_older_records_do_not_complete_a_mixed_fingerprint() {
        let ids = names(5);
        let h = |i: usize| Fingerprint::name_hash(&ids[i], true);
        assert_ne!(h(1).wrapping_add(h(2)), h(0).wrapping_add(h(3)));
        let old = Fingerprint::of(&ids);
        let new = Fingerprint::of([&ids[0], &ids[3], &ids[4]]);
        let mut recovery = Recovery::default();
        recovery.add_records(4, &ids[4], record(8, new, true), None);
        for i in [1, 2] {
            recovery.add_records(i, &ids[i as usize], record(7, old, true), None);
        }
        assert!(!recovery.is_complete(|_| true, false));
        assert!(!recovery.is_complete(|_| true, true));
        back_they_complete_it(&mut recovery, &ids, record(8, new, true));
    }

    #[test]
    fn subsets_count_exactly_or_say_too_many() {
        assert_eq!(subsets(5, 2), 10);
        assert_eq!(subsets(5, 5), 1);
        assert_eq!(subsets(5, 0), 1);
        assert_eq!(subsets(200, 190), subsets(200, 10));
        assert!(subsets(200, 190) > MAX_SUBSETS_TRIED);
        assert_eq!(subsets(10_000, 5_000), u64::MAX);
        assert_eq!(subsets(50_000, 49_999), 50_000);
    }

    /// One client says it is in view 5; every other member was down while view 5 was
    /// installed and knows only view 4. The fingerprint still finds them all, and the
    /// search is one sum, not a recursion as deep as the membership (it overflowed the
    /// stack at this size).
    #[test]
    fn members_that_never_heard_of_the_view_are_found_by_its_fingerprint() {
        let ids = names(50_000);
        let all = Fingerprint::of(&ids);
        let mut recovery = Recovery::default();
        recovery.add_records(0, &ids[0], record(5, all, true), None);
        assert!(!recovery.is_complete(|_| true, false));
        let old = Fingerprint::of(&ids[1..]);
        for (idx, id) in ids.iter().enumerate().skip(1) {
            recovery.add_records(idx as u32, id, record(4, old, true), None);
        }
        assert!(recovery.is_complete(|_| true, false));
        assert_eq!(recovery.members(false).len(), ids.len());
        // One of them missing: not whole.
        let mut short = Recovery::default();
        short.add_records(0, &ids[0], record(5, all, true), None);
        for (idx, id) in ids.iter().enumerate().skip(2) {
            short.add_records(idx as u32, id, record(4, old, true), None);
        }
        assert!(!short.is_complete(|_| true, false));
    }
}
