//! One ballot's votes. The electorate is the client indexes `0..voters`: clients registered
//! when it opened (indexes are dense and only grow).

use crate::proto::{Seq, Tally};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BallotState {
    /// Collecting votes.
    Open,
    /// Every vote is in; the primary waits for the backup's `CommitAck`.
    Committing,
    /// The backup has it (or the view has none): tell the clients, lease permitting.
    Acked,
}

#[derive(Clone, Debug)]
pub struct Ballot {
    pub seq: Seq,
    pub voters: u32,
    /// `votes[i]`: client i's vote, once counted.
    pub votes: Vec<Option<bool>>,
    counted: u32,
    pub state: BallotState,
    pub opened: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    Counted,
    /// The same vote again (a client re-sends after a reconnect or a re-ask).
    Duplicate,
    /// A different vote from a client already counted: the first one stands.
    Conflict,
    /// The client registered after this ballot opened.
    NotAVoter,
}

impl Ballot {
    pub fn new(seq: Seq, voters: u32, now: Instant) -> Ballot {
        Ballot {
            seq,
            voters,
            votes: vec![None; voters as usize],
            counted: 0,
            state: BallotState::Open,
            opened: now,
        }
    }

    /// From a snapshot. Votes beyond the electorate are dropped: a snapshot is input.
    pub fn restore(seq: Seq, voters: u32, mut votes: Vec<Option<bool>>, now: Instant) -> Ballot {
        votes.resize(voters as usize, None);
        let counted = votes.iter().filter(|v| v.is_some()).count() as u32;
        Ballot {
            seq,
            voters,
            votes,
            counted,
            state: BallotState::Open,
            opened: now,
        }
    }

    pub fn record(&mut self, client: u32, yes: bool) -> VoteOutcome {
        let Some(slot) = self.votes.get_mut(client as usize) else {
            return VoteOutcome::NotAVoter;
        };
        match *slot {
            None => {
                *slot = Some(yes);
                self.counted += 1;
                debug_assert!(self.counted <= self.voters);
                VoteOutcome::Counted
            }
            Some(v) if v == yes => VoteOutcome::Duplicate,
            Some(_) => VoteOutcome::Conflict,
        }
    }

    /// Whether client `idx` is a voter whose vote is not in yet.
    pub fn awaits(&self, idx: u32) -> bool {
        matches!(self.votes.get(idx as usize), Some(None))
    }

    pub fn complete(&self) -> bool {
        self.counted == self.voters
    }

    pub fn tally(&self) -> Tally {
        let yes = self.votes.iter().filter(|v| **v == Some(true)).count() as u32;
        Tally {
            yes,
            no: self.counted - yes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_only_when_every_voter_voted_once() {
        let mut b = Ballot::new(Seq(1), 3, Instant::now());
        assert_eq!(b.record(0, true), VoteOutcome::Counted);
        assert_eq!(b.record(0, true), VoteOutcome::Duplicate);
        assert_eq!(b.record(0, false), VoteOutcome::Conflict);
        assert_eq!(b.record(3, true), VoteOutcome::NotAVoter);
        assert!(!b.complete());
        b.record(1, false);
        b.record(2, true);
        assert!(b.complete());
        assert_eq!(b.tally(), Tally { yes: 2, no: 1 });
    }

    #[test]
    fn restore_ignores_votes_beyond_the_electorate() {
        let b = Ballot::restore(Seq(4), 1, vec![Some(true), Some(false)], Instant::now());
        assert!(b.complete());
        assert_eq!(b.tally(), Tally { yes: 1, no: 0 });
    }
}
