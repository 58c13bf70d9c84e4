//! Every deadline of a server, in one table over one enum (quinn's `TimerTable`). The
//! handler of each is [`super::Node::on_timer`], one exhaustive match. A timestamp that is
//! only compared against (when the last ballot opened, when the last backup was spawned,
//! when a joiner gives up) is not a timer: it lives with the role that keeps it.

use std::time::Instant;

/// A server's timers, in the order they are handled when several are due at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Joining: dial the primary. Armed at start for `backup_start_delay`, and one
    /// heartbeat after a failed dial or a refusal.
    Join,
    /// Send the next heartbeat to the peer and, as primary, a lease renewal to every
    /// client. Armed at start (primary), when a peer link comes up, and on every install;
    /// re-armed every `heartbeat` while armed.
    Heartbeat,
    /// The lease renewal that the last heartbeat held back leaves by then, if no publish
    /// took it along first: riding with a turn's `Results`, it shares their write, and
    /// the clients' `LeaseAck`s share their votes'. Armed by `Heartbeat` on a primary for
    /// [`super::NodeConfig::lease_renewal_hold`]; disarmed when the renewal leaves.
    LeaseRenewal,
    /// The peer is dead if nothing arrives from it by then. Armed when a peer link comes
    /// up and pushed back by every frame on it; disarmed when the link is lost.
    PeerDead,
    /// Re-send the pending proposal to the clients that have not accepted it. Armed one
    /// heartbeat after each sending, or when a client said to retry after its lease.
    Propose,
    /// Spawn a backup: armed when a spawn was wanted sooner than one heartbeat after the
    /// previous one (spawns are spaced so a backup that dies at once is not a busy loop).
    Respawn,
    /// The backup we spawned must have joined by then, else it is replaced. Armed at each
    /// spawn for `join_deadline`; disarmed when a joiner's hello arrives.
    JoinDeadline,
    /// Re-ask the missing voters of the open ballots. Armed when a ballot opens (if not
    /// armed yet) and re-armed each time it fires while ballots are open.
    Reask,
    /// The earliest moment the primary may open the next ballot. Armed whenever the window
    /// has room and the primary may open (lease held, clients enough, `--ballots` left).
    OpenBallot,
    /// A member has been disconnected for `--absent-after-ms` by then: remove it. Armed
    /// (with the flag set) on the primary whenever a member has no connection, for the
    /// earliest of them.
    Absent,
}

impl Timer {
    pub const ALL: [Timer; 10] = [
        Timer::Join,
        Timer::Heartbeat,
        Timer::LeaseRenewal,
        Timer::PeerDead,
        Timer::Propose,
        Timer::Respawn,
        Timer::JoinDeadline,
        Timer::Reask,
        Timer::OpenBallot,
        Timer::Absent,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// When each [`Timer`] fires; `None`: not armed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer.index()] = Some(at);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    /// Arms `timer` for `at`, or keeps it where it is if that is sooner.
    pub fn set_no_later_than(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.at[timer.index()];
        *slot = Some(slot.map_or(at, |t| t.min(at)));
    }

    /// Arms `timer` for `at` unless it is armed already.
    pub fn set_if_stopped(&mut self, timer: Timer, at: Instant) {
        self.at[timer.index()].get_or_insert(at);
    }

    pub fn is_armed(&self, timer: Timer) -> bool {
        self.at[timer.index()].is_some()
    }

    #[cfg(test)]
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer.index()]
    }

    pub fn stop_all(&mut self) {
        self.at = Default::default();
    }

    pub fn is_empty(&self) -> bool {
        self.at.iter().all(Option::is_none)
    }

    pub fn earliest(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// Disarms `timer` and returns true if it was due at `now`.
    pub fn take_due(&mut self, timer: Timer, now: Instant) -> bool {
        let slot = &mut self.at[timer.index()];
        if slot.is_some_and(|t| t <= now) {
            *slot = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn all_lists_every_timer_once_in_index_order() {
        for (i, timer) in Timer::ALL.iter().enumerate() {
            assert_eq!(timer.index(), i, "{timer:?}");
        }
    }

    #[test]
    fn only_a_due_timer_is_taken() {
        let now = Instant::now();
        let mut t = TimerTable::default();
        t.set(Timer::Reask, now + Duration::from_millis(5));
        t.set(Timer::Join, now);
        assert_eq!(t.earliest(), Some(now));
        assert!(!t.take_due(Timer::Reask, now));
        assert!(t.take_due(Timer::Join, now));
        assert!(!t.take_due(Timer::Join, now));
        t.set_no_later_than(Timer::Reask, now + Duration::from_millis(9));
        assert_eq!(t.get(Timer::Reask), Some(now + Duration::from_millis(5)));
        t.stop_all();
        assert!(t.is_empty());
    }
}
