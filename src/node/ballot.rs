//! One ballot's votes ([`Ballot`]), and the ballots open at once ([`OpenBallots`]). The
//! electorate of a ballot is the client indexes `0..voters`: clients registered when it
//! opened (indexes are dense and only grow).

use crate::proto::{Seq, Tally};
use std::collections::VecDeque;
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

    /// Its vote count agrees with the votes it holds, within its electorate.
    pub fn check(&self) -> Result<(), String> {
        let held = self.votes.iter().filter(|v| v.is_some()).count();
        if self.votes.len() != self.voters as usize || held != self.counted as usize {
            return Err(format!(
                "ballot {} counts {} of {} voters but holds {held} votes in {} slots",
                self.seq,
                self.counted,
                self.voters,
                self.votes.len()
            ));
        }
        Ok(())
    }

    pub fn tally(&self) -> Tally {
        let yes = self.votes.iter().filter(|v| **v == Some(true)).count() as u32;
        Tally {
            yes,
            no: self.counted - yes,
        }
    }
}

/// The open ballots, in seq order without a gap; the front one is the next to commit.
#[derive(Debug, Default)]
pub struct OpenBallots {
    ballots: VecDeque<Ballot>,
}

impl OpenBallots {
    pub fn len(&self) -> usize {
        self.ballots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ballots.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ballot> {
        self.ballots.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Ballot> {
        self.ballots.iter_mut()
    }

    pub fn front(&self) -> Option<&Ballot> {
        self.ballots.front()
    }

    pub fn get_mut(&mut self, seq: Seq) -> Option<&mut Ballot> {
        let first = self.ballots.front()?.seq;
        let offset = seq.0.checked_sub(first.0)?;
        self.ballots.get_mut(offset as usize)
    }

    /// Opens the next ballot: its seq must follow the last one's.
    pub fn push(&mut self, ballot: Ballot) {
        if let Some(last) = self.ballots.back() {
            assert_eq!(ballot.seq, last.seq.next(), "ballots open in seq order");
        }
        self.ballots.push_back(ballot);
    }

    pub fn pop_front(&mut self) -> Option<Ballot> {
        self.ballots.pop_front()
    }

    /// Replaces every open ballot (a snapshot).
    pub fn restore(&mut self, ballots: impl IntoIterator<Item = Ballot>) {
        self.ballots = ballots.into_iter().collect();
    }

    /// The ballots follow `committed` without a gap, and each one's count is right.
    pub fn check(&self, committed: Seq) -> Result<(), String> {
        let mut expected = committed.next();
        for ballot in &self.ballots {
            if ballot.seq != expected {
                return Err(format!(
                    "ballot {} open where {expected} is due",
                    ballot.seq
                ));
            }
            ballot.check()?;
            expected = expected.next();
        }
        Ok(())
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
