//! The votes a client cast on ballots it has not logged yet, so that a re-ask gets the
//! same answer and an `Accept` can carry them to a new primary.

use crate::proto::limits::MAX_VOTES_HELD;
use crate::proto::Seq;
use std::collections::VecDeque;

/// Ordered by seq. Ballots are asked for and logged in seq order, so a vote joins at the
/// back and leaves from the front: no shifting inside a tree node per ballot (a
/// `BTreeMap` here was the bench's largest source of `memcpy`).
#[derive(Debug, Default)]
pub struct Cast {
    votes: VecDeque<(Seq, bool)>,
}

impl Cast {
    /// The vote already cast on `seq`, or `decide(seq)` cast now.
    pub fn get_or_cast(&mut self, seq: Seq, decide: impl FnOnce(Seq) -> bool) -> bool {
        let yes = match self.votes.back() {
            Some(&(last, _)) if last >= seq => {
                match self.votes.binary_search_by_key(&seq, |&(s, _)| s) {
                    Ok(i) => return self.votes[i].1,
                    Err(i) => {
                        let yes = decide(seq);
                        self.votes.insert(i, (seq, yes));
                        yes
                    }
                }
            }
            _ => {
                let yes = decide(seq);
                self.votes.push_back((seq, yes));
                yes
            }
        };
        // Held for the nearest ballots first: the furthest ahead go.
        self.votes.truncate(MAX_VOTES_HELD);
        yes
    }

    /// Ballots up to `seq` are logged: their votes are no longer needed.
    pub fn logged_through(&mut self, seq: Seq) {
        while self.votes.front().is_some_and(|&(s, _)| s <= seq) {
            self.votes.pop_front();
        }
    }

    /// Every vote is on a ballot after `logged` (the last one logged), in strictly
    /// increasing seq order.
    pub fn check(&self, logged: Seq) -> Result<(), String> {
        let mut previous = logged;
        for &(seq, _) in &self.votes {
            if seq <= previous {
                return Err(format!("vote on {seq} held after {previous}"));
            }
            previous = seq;
        }
        Ok(())
    }

    /// Every vote cast on `from` or later, in seq order.
    pub fn from(&self, from: Seq) -> impl Iterator<Item = (Seq, bool)> + '_ {
        let start = self.votes.partition_point(|&(s, _)| s < from);
        self.votes.range(start..).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A server asking ever further ahead makes the client hold at most `MAX_VOTES_HELD`
    /// votes, the nearest ones, and a vote let go is cast the same way when asked again.
    #[test]
    fn votes_held_are_bounded_and_the_nearest_kept() {
        let mut cast = Cast::default();
        let policy = |seq: Seq| seq.0 % 3 == 0;
        for seq in (1..=3 * MAX_VOTES_HELD as u64).rev() {
            assert_eq!(cast.get_or_cast(Seq(seq), policy), policy(Seq(seq)));
        }
        assert_eq!(cast.votes.len(), MAX_VOTES_HELD);
        assert_eq!(cast.from(Seq(0)).next(), Some((Seq(1), policy(Seq(1)))));
        let far = Seq(3 * MAX_VOTES_HELD as u64);
        assert_eq!(cast.get_or_cast(far, policy), policy(far));
        assert_eq!(cast.check(Seq(0)), Ok(()));
    }

    /// Against the map it replaces, over requests in and out of order, overlapping
    /// re-asks and logging.
    #[test]
    fn answers_as_a_map_would() {
        let mut cast = Cast::default();
        let mut map = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut logged = 0u64;
        for _ in 0..20_000 {
            let roll = next();
            if roll % 4 == 0 {
                logged += roll % 3;
                cast.logged_through(Seq(logged));
                map.retain(|&s: &u64, _| s > logged);
            } else {
                let seq = logged + 1 + (roll >> 8) % 40;
                let yes = (roll >> 20) % 2 == 0;
                let got = cast.get_or_cast(Seq(seq), |_| yes);
                assert_eq!(got, *map.entry(seq).or_insert(yes), "seq {seq}");
            }
            let from = logged + 1 + next() % 10;
            let want: Vec<(Seq, bool)> = map.range(from..).map(|(&s, &y)| (Seq(s), y)).collect();
            assert_eq!(cast.from(Seq(from)).collect::<Vec<_>>(), want);
        }
    }
}
