//! How a server is configured, validated once ([`NodeConfig::validate`], as raft-rs's
//! `Config::validate`) by every caller before [`super::Node::new`], which asserts it. The
//! core never re-clamps a setting; every timing it derives from them is a method here.

use crate::proto::limits::{MAX_CLIENTS, MAX_OPEN_BALLOTS};
use crate::proto::NodeId;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// How a server starts.
#[derive(Clone, Debug)]
pub enum StartRole {
    Primary,
    Backup { join: SocketAddr },
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node: NodeId,
    /// Where this server serves clients and peers (the bound address, never port 0).
    pub listen: SocketAddr,
    pub start: StartRole,
    pub heartbeat: Duration,
    /// Heartbeat intervals without a frame from the peer before it counts as dead.
    pub miss_limit: u32,
    /// How long a backup waits after starting before it joins (a heavyweight start).
    pub backup_start_delay: Duration,
    /// Least time between two ballot openings.
    pub ballot_interval: Duration,
    /// Open ballots 1..=N, then stop opening (keep serving).
    pub ballots: Option<u64>,
    /// Open ballot 1 only once this many clients registered (at least 1: every view
    /// change needs a client as its witness).
    pub min_clients: usize,
    /// Most ballots open at once, 1..=[`MAX_OPEN_BALLOTS`].
    pub window: u64,
    /// Spawn a backup at start (primary only; `--no-spawn` clears it).
    pub spawn_backup: bool,
    /// A member disconnected from the primary longer than this is removed, as by
    /// `remove-client` (`--absent-after-ms`; `None`: never).
    pub absent_after: Option<Duration>,
}

/// A setting out of its range; the message names the flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    HeartbeatZero,
    MissLimitZero,
    /// `heartbeat * miss_limit` (the lease), or a deadline built on it, overflows.
    LeaseTooLong,
    WindowOutOfRange(u64),
    MinClientsOutOfRange(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::HeartbeatZero => f.write_str("--heartbeat-ms must be positive"),
            ConfigError::MissLimitZero => f.write_str("--miss-limit must be positive"),
            ConfigError::LeaseTooLong => f.write_str(
                "--heartbeat-ms times --miss-limit (the lease), plus --backup-start-delay-ms, is too long",
            ),
            ConfigError::WindowOutOfRange(w) => {
                write!(f, "--window must be 1..={MAX_OPEN_BALLOTS}, not {w}")
            }
            ConfigError::MinClientsOutOfRange(n) => write!(
                f,
                "--min-clients must be 1..={MAX_CLIENTS}, not {n} (every view change needs a client as witness)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A spawned backup has this many lease times beyond its start delay to join before it is
/// replaced: one for the state transfer, one for the view change that installs it.
const JOIN_DEADLINE_LEASES: u32 = 2;

/// A challenger outbid by a competing proposal waits this many lease times before it
/// proposes again, so that the installed primary's retry (after one lease) comes first and
/// two proposers never outbid each other for ever.
pub const CHALLENGER_YIELD_LEASES: u32 = 2;

/// Lease renewal rounds kept beyond the `miss_limit` that can still extend a lease: acks
/// that arrive a little late still count.
pub const LEASE_ROUNDS_SLACK: usize = 4;

/// A heartbeat holds its lease renewal back for at most this part of a heartbeat
/// ([`NodeConfig::lease_renewal_hold`]).
pub const LEASE_RENEWAL_HOLD_DIVISOR: u32 = 2;

/// See [`NodeConfig::first_ballot_wait`]: five of a client's redial intervals.
pub const FIRST_BALLOT_MIN_WAIT: Duration = Duration::from_secs(1);

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat.is_zero() {
            return Err(ConfigError::HeartbeatZero);
        }
        if self.miss_limit == 0 {
            return Err(ConfigError::MissLimitZero);
        }
        if !(1..=MAX_OPEN_BALLOTS).contains(&self.window) {
            return Err(ConfigError::WindowOutOfRange(self.window));
        }
        if !(1..=MAX_CLIENTS).contains(&self.min_clients) {
            return Err(ConfigError::MinClientsOutOfRange(self.min_clients));
        }
        // Every deadline is `now + one of these`: none may overflow an `Instant` either,
        // so keep them far below `Duration::MAX` (a century is far enough).
        let century = Duration::from_secs(100 * 365 * 24 * 3600);
        let longest = self
            .heartbeat
            .checked_mul(self.miss_limit)
            .and_then(|lease| lease.checked_mul(JOIN_DEADLINE_LEASES + 1))
            .and_then(|d| d.checked_add(self.backup_start_delay))
            .and_then(|d| d.checked_add(self.ballot_interval));
        match longest {
            Some(d) if d <= century => Ok(()),
            _ => Err(ConfigError::LeaseTooLong),
        }
    }

    /// Silence from the peer longer than this means it is dead. Clients hold a primary's
    /// lease for the same time.
    pub fn peer_timeout(&self) -> Duration {
        self.heartbeat * self.miss_limit
    }

    /// How long a server started as primary waits before ballot 1: a peer timeout, and
    /// at least [`FIRST_BALLOT_MIN_WAIT`], by when every running client whose servers both
    /// died has redialed (every 200 ms) and said hello (docs/PROTOCOL.md §9).
    pub fn first_ballot_wait(&self) -> Duration {
        self.peer_timeout().max(FIRST_BALLOT_MIN_WAIT)
    }

    /// A ballot that has waited this long for votes re-asks the voters it lacks.
    pub fn vote_timeout(&self) -> Duration {
        self.peer_timeout()
    }

    /// A spawned backup that has not joined by then is replaced.
    pub fn join_deadline(&self) -> Duration {
        self.backup_start_delay + self.peer_timeout() * JOIN_DEADLINE_LEASES
    }

    /// A joiner that has found no primary to join for this long gives up: its primary, if
    /// alive, has replaced it by then (one lease after the primary's own join deadline).
    pub fn join_give_up(&self) -> Duration {
        self.join_deadline() + self.peer_timeout()
    }

    /// How long a challenger that was outbid waits before it proposes again.
    pub fn challenger_yield(&self) -> Duration {
        self.peer_timeout() * CHALLENGER_YIELD_LEASES
    }

    /// How long a heartbeat's lease renewal may wait for a publish to ride with. A renewal
    /// is stamped when it leaves, so the hold costs no safety; it delays renewals by at
    /// most half a heartbeat against a lease of `miss_limit` heartbeats. None with a lease
    /// of one heartbeat, which renewals half a heartbeat late would let lapse.
    pub fn lease_renewal_hold(&self) -> Duration {
        if self.miss_limit < 2 {
            Duration::ZERO
        } else {
            self.heartbeat / LEASE_RENEWAL_HOLD_DIVISOR
        }
    }

    /// Lease renewal rounds worth keeping: older ones cannot extend any lease.
    pub fn lease_rounds_kept(&self) -> usize {
        self.miss_limit as usize + LEASE_ROUNDS_SLACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig {
            node: NodeId(1),
            listen: "127.0.0.1:7000".parse().expect("addr"),
            start: StartRole::Primary,
            heartbeat: Duration::from_secs(1),
            miss_limit: 5,
            backup_start_delay: Duration::from_secs(30),
            ballot_interval: Duration::from_secs(1),
            ballots: None,
            min_clients: 1,
            window: 1,
            spawn_backup: true,
            absent_after: None,
        }
    }

    #[test]
    fn the_defaults_are_valid_and_each_range_is_enforced() {
        assert_eq!(cfg().validate(), Ok(()));
        let with = |f: fn(&mut NodeConfig)| {
            let mut c = cfg();
            f(&mut c);
            c.validate()
        };
        assert_eq!(
            with(|c| c.heartbeat = Duration::ZERO),
            Err(ConfigError::HeartbeatZero)
        );
        assert_eq!(with(|c| c.miss_limit = 0), Err(ConfigError::MissLimitZero));
        assert_eq!(
            with(|c| c.window = 0),
            Err(ConfigError::WindowOutOfRange(0))
        );
        assert_eq!(
            with(|c| c.window = MAX_OPEN_BALLOTS + 1),
            Err(ConfigError::WindowOutOfRange(MAX_OPEN_BALLOTS + 1))
        );
        assert_eq!(
            with(|c| c.min_clients = 0),
            Err(ConfigError::MinClientsOutOfRange(0))
        );
        assert_eq!(
            with(|c| {
                c.heartbeat = Duration::from_secs(u64::MAX / 4);
                c.miss_limit = 1_000;
            }),
            Err(ConfigError::LeaseTooLong)
        );
    }
}
