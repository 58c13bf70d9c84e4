//! `pbvote status --watch`: one line per server per interval, as `redis-cli --stat` does,
//! following the cluster across a failover. Each round asks every server it knows of (the
//! one named, then whichever the answers name: the view's primary and backup, the peer);
//! a server that stops answering is reported once and dropped, so a watch that began at a
//! primary that died goes on at its successor, and picks up the backup it spawns.

use crate::proto::{NodeId, StatusReply};
use crate::reactor::status;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest interval: each round asks every server, with this as its timeout too.
pub const MIN_WATCH_INTERVAL_MS: u64 = 100;

/// One line of the watch: a server's state this round, or its loss.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchLine {
    Up {
        time_ms: u64,
        server: SocketAddr,
        role: String,
        view: String,
        committed: u64,
        /// Ballots completed per second since this server's previous line (`None` on its
        /// first).
        ballots_per_s: Option<f64>,
        open: u64,
        clients_connected: u64,
        clients_registered: u64,
        members: u64,
        peer: Option<SocketAddr>,
        peer_alive: Option<bool>,
        peer_last_heard_ms: Option<u64>,
    },
    /// Another process answers at this address than last round (a respawned backup may
    /// take its dead primary's address): said before its `Up` line.
    Replaced {
        time_ms: u64,
        server: SocketAddr,
        node: String,
        was: String,
    },
    /// It stopped answering (or never did): said once, then it is no longer asked,
    /// unless another server names it again.
    Down {
        time_ms: u64,
        server: SocketAddr,
        error: String,
    },
    /// No server answers: the watch keeps asking every address it has seen.
    NoServer { time_ms: u64 },
}

struct Seen {
    node: NodeId,
    committed: u64,
    at: Instant,
}

pub struct Watch {
    timeout: Duration,
    /// The servers asked each round, with what the last answer said.
    watching: BTreeMap<SocketAddr, Option<Seen>>,
    /// Every address seen, to fall back to when none answers.
    ever: Vec<SocketAddr>,
    /// Servers reported down and not heard from since: not reported again.
    down: BTreeSet<SocketAddr>,
    said_no_server: bool,
}

impl Watch {
    pub fn new(server: SocketAddr, interval: Duration) -> Watch {
        Watch {
            timeout: interval.max(Duration::from_millis(MIN_WATCH_INTERVAL_MS)),
            watching: BTreeMap::from([(server, None)]),
            ever: vec![server],
            down: BTreeSet::new(),
            said_no_server: false,
        }
    }

    /// Asks every server watched once; returns the lines to print, in address order.
    pub fn round(&mut self) -> Vec<WatchLine> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut lines = Vec::new();
        let mut named = Vec::new();
        let asked: Vec<SocketAddr> = self.watching.keys().copied().collect();
        for server in asked {
            match status::query(server, self.timeout) {
                Ok(reply) => {
                    self.down.remove(&server);
                    named.extend(named_servers(&reply));
                    let now = Instant::now();
                    let seen = Seen {
                        node: reply.node,
                        committed: reply.committed.0,
                        at: now,
                    };
                    let before = self.watching.insert(server, Some(seen)).flatten();
                    let before = match before {
                        Some(b) if b.node != reply.node => {
                            lines.push(WatchLine::Replaced {
                                time_ms,
                                server,
                                node: reply.node.to_string(),
                                was: b.node.to_string(),
                            });
                            None
                        }
                        other => other,
                    };
                    let rate = before.map(|b| {
                        let secs = now.saturating_duration_since(b.at).as_secs_f64();
                        let done = reply.committed.0.saturating_sub(b.committed) as f64;
                        if secs > 0.0 {
                            done / secs
                        } else {
                            0.0
                        }
                    });
                    lines.push(up_line(time_ms, server, &reply, rate));
                }
                Err(error) => {
                    self.watching.remove(&server);
                    if self.down.insert(server) {
                        lines.push(WatchLine::Down {
                            time_ms,
                            server,
                            error,
                        });
                    }
                }
            }
        }
        for server in named {
            if !self.ever.contains(&server) {
                self.ever.push(server);
            }
            self.watching.entry(server).or_insert(None);
        }
        if self.watching.is_empty() {
            // Nobody answers: ask every address seen next round, and say so once.
            self.watching = self.ever.iter().map(|&a| (a, None)).collect();
            if !self.said_no_server {
                self.said_no_server = true;
                lines.push(WatchLine::NoServer { time_ms });
            }
        } else if lines.iter().any(|l| matches!(l, WatchLine::Up { .. })) {
            self.said_no_server = false;
        }
        lines
    }
}

/// The servers an answer names: its view's primary and backup, and its peer.
fn named_servers(reply: &StatusReply) -> Vec<SocketAddr> {
    let peer = reply.peer.as_ref().and_then(|p| p.addr);
    [Some(reply.view.primary), reply.view.backup, peer]
        .into_iter()
        .flatten()
        .collect()
}

fn up_line(time_ms: u64, server: SocketAddr, reply: &StatusReply, rate: Option<f64>) -> WatchLine {
    let peer = reply.peer.as_ref();
    WatchLine::Up {
        time_ms,
        server,
        role: reply.role.to_string(),
        view: reply.view.to_string(),
        committed: reply.committed.0,
        ballots_per_s: rate.map(|r| (r * 10.0).round() / 10.0),
        open: reply.open_ballots,
        clients_connected: reply.connected_clients,
        clients_registered: reply.clients.len() as u64,
        members: reply.members.len() as u64,
        peer: peer.and_then(|p| p.addr),
        peer_alive: peer.map(|p| p.alive),
        peer_last_heard_ms: peer.and_then(|p| p.last_heard_ms),
    }
}

/// `HH:MM:SS.fff` (UTC, `digits` of the second's fraction, at most 9) of a time since the
/// epoch.
pub fn time_of_day(since_epoch: Duration, digits: u32) -> String {
    let secs = since_epoch.as_secs() % 86_400;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let digits = digits.min(9);
    let fraction = since_epoch.subsec_nanos() / 10u32.pow(9 - digits);
    format!(
        "{h:02}:{m:02}:{s:02}.{fraction:0width$}",
        width = digits as usize
    )
}

fn clock(time_ms: u64) -> String {
    time_of_day(Duration::from_millis(time_ms), 3)
}

impl fmt::Display for WatchLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchLine::Up {
                time_ms,
                server,
                role,
                view,
                committed,
                ballots_per_s,
                open,
                clients_connected,
                clients_registered,
                members,
                peer,
                peer_alive,
                peer_last_heard_ms,
            } => {
                let rate = ballots_per_s.map_or("-".to_string(), |r| format!("{r:.1}"));
                let peer = match (peer, peer_alive) {
                    (None, _) => "none".to_string(),
                    (Some(addr), alive) => format!(
                        "{addr} {} heard={}",
                        if *alive == Some(true) {
                            "alive"
                        } else {
                            "dead"
                        },
                        peer_last_heard_ms.map_or("never".to_string(), |ms| format!("{ms}ms"))
                    ),
                };
                write!(
                    f,
                    "{} {server} {role:<7} view={view} committed={committed} ballots/s={rate} \
                     open={open} clients={clients_connected}/{clients_registered} \
                     members={members} peer={peer}",
                    clock(*time_ms)
                )
            }
            WatchLine::Replaced {
                time_ms,
                server,
                node,
                was,
            } => write!(
                f,
                "{} {server} REPLACED node={node} was={was}",
                clock(*time_ms)
            ),
            WatchLine::Down {
                time_ms,
                server,
                error,
            } => write!(f, "{} {server} DOWN {error}", clock(*time_ms)),
            WatchLine::NoServer { time_ms } => write!(
                f,
                "{} no server answers; still asking every address seen",
                clock(*time_ms)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(86_400_000 + 3_723_004), "01:02:03.004");
    }

    #[test]
    fn a_watch_of_nothing_says_so_once() {
        // A port nobody listens on: probed by binding and dropping.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let mut watch = Watch::new(addr, Duration::from_millis(100));
        let first = watch.round();
        assert!(matches!(first[0], WatchLine::Down { server, .. } if server == addr));
        assert!(matches!(first.last(), Some(WatchLine::NoServer { .. })));
        let second = watch.round();
        assert!(
            second
                .iter()
                .all(|l| !matches!(l, WatchLine::NoServer { .. })),
            "{second:?}"
        );
    }
}
