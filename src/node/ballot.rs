//! One ballot's votes ([`Ballot`]), and the ballots open at once ([`OpenBallots`]). The
//! electorate of a ballot is the members of the view it opened in, kept by the ballot: a
//! change of members never alters a ballot already open (but for an operator's removal,
//! which stops it waiting for a vote).

use super::membership::Members;
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

/// A client's place in one ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Not in the electorate (not a member when the ballot opened).
    NotVoter,
    Awaited,
    Voted(bool),
}

#[derive(Clone, Debug)]
pub struct Ballot {
    pub seq: Seq,
    /// `slots[i]`: client index i's place; indexes past the end are not voters.
    slots: Vec<Slot>,
    voters: u32,
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
    /// The client was not a member when this ballot opened.
    NotAVoter,
}

impl Ballot {
    /// A ballot whose electorate is `members`, the membership of the view it opens in.
    pub fn new(seq: Seq, members: &Members, now: Instant) -> Ballot {
        let mut slots = vec![Slot::NotVoter; members.bound() as usize];
        for idx in members.iter() {
            slots[idx as usize] = Slot::Awaited;
        }
        Ballot {
            seq,
            slots,
            voters: members.len() as u32,
            counted: 0,
            state: BallotState::Open,
            opened: now,
        }
    }

    /// From a snapshot: its electorate and the votes counted so far. Votes from outside
    /// the electorate are dropped: a snapshot is input.
    pub fn restore(
        seq: Seq,
        electorate: &Members,
        votes: impl IntoIterator<Item = (u32, bool)>,
        now: Instant,
    ) -> Ballot {
        let mut ballot = Ballot::new(seq, electorate, now);
        for (client, yes) in votes {
            ballot.record(client, yes);
        }
        ballot
    }

    pub fn record(&mut self, client: u32, yes: bool) -> VoteOutcome {
        let Some(slot) = self.slots.get_mut(client as usize) else {
            return VoteOutcome::NotAVoter;
        };
        match *slot {
            Slot::NotVoter => VoteOutcome::NotAVoter,
            Slot::Awaited => {
                *slot = Slot::Voted(yes);
                self.counted += 1;
                debug_assert!(self.counted <= self.voters);
                VoteOutcome::Counted
            }
            Slot::Voted(v) if v == yes => VoteOutcome::Duplicate,
            Slot::Voted(_) => VoteOutcome::Conflict,
        }
    }

    /// Whether client `idx` is in the electorate (voted or not).
    pub fn counts(&self, idx: u32) -> bool {
        !matches!(self.slots.get(idx as usize), None | Some(Slot::NotVoter))
    }

    /// Whether client `idx` is a voter whose vote is not in yet.
    pub fn awaits(&self, idx: u32) -> bool {
        matches!(self.slots.get(idx as usize), Some(Slot::Awaited))
    }

    /// The client indexes of the electorate.
    pub fn electorate(&self) -> Members {
        Members::from_indexes(self.indexes_where(|s| s != Slot::NotVoter))
    }

    /// The votes counted: `(client index, yes)`.
    pub fn votes(&self) -> Vec<(u32, bool)> {
        let voted = self.indexes_where(|s| matches!(s, Slot::Voted(_)));
        voted
            .into_iter()
            .map(|i| (i, self.slots[i as usize] == Slot::Voted(true)))
            .collect()
    }

    /// The voters still awaited.
    pub fn missing(&self) -> Vec<u32> {
        self.indexes_where(|s| s == Slot::Awaited)
    }

    fn indexes_where(&self, pick: impl Fn(Slot) -> bool) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| pick(self.slots[i as usize]))
            .collect()
    }

    /// Client `idx`, removed by an operator, no longer votes here if its vote is not in
    /// yet; returns whether the ballot waited for it.
    pub fn drop_voter(&mut self, idx: u32) -> bool {
        match self.slots.get_mut(idx as usize) {
            Some(slot @ Slot::Awaited) => {
                *slot = Slot::NotVoter;
                self.voters -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn complete(&self) -> bool {
        self.counted == self.voters
    }

    /// Its counts agree with its slots.
    pub fn check(&self) -> Result<(), String> {
        let voters = self.slots.iter().filter(|s| **s != Slot::NotVoter).count();
        let voted = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Voted(_)))
            .count();
        if voters != self.voters as usize || voted != self.counted as usize {
            return Err(format!(
                "ballot {} counts {} of {} voters but holds {voted} votes of {voters}",
                self.seq, self.counted, self.voters
            ));
        }
        Ok(())
    }

    /// One past the highest client index with a slot.
    pub fn bound(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn tally(&self) -> Tally {
        let yes = self
            .slots
            .iter()
            .filter(|s| **s == Slot::Voted(true))
            .count() as u32;
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
        let members = Members::from_indexes([0, 1, 3]);
        let mut b = Ballot::new(Seq(1), &members, Instant::now());
        assert_eq!(b.record(0, true), VoteOutcome::Counted);
        assert_eq!(b.record(0, true), VoteOutcome::Duplicate);
        assert_eq!(b.record(0, false), VoteOutcome::Conflict);
        assert_eq!(b.record(2, true), VoteOutcome::NotAVoter);
        assert_eq!(b.record(4, true), VoteOutcome::NotAVoter);
        assert!(!b.complete());
        assert_eq!(b.missing(), vec![1, 3]);
        b.record(1, false);
        b.record(3, true);
        assert!(b.complete());
        assert_eq!(b.tally(), Tally { yes: 2, no: 1 });
        assert_eq!(b.electorate(), members);
        assert_eq!(b.check(), Ok(()));
    }

    #[test]
    fn restore_ignores_votes_beyond_the_electorate() {
        let b = Ballot::restore(
            Seq(4),
            &Members::from_indexes([0]),
            [(0, true), (1, false)],
            Instant::now(),
        );
        assert!(b.complete());
        assert_eq!(b.tally(), Tally { yes: 1, no: 0 });
        assert_eq!(b.votes(), vec![(0, true)]);
    }
}
