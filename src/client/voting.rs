//! The client's votes and its log: a vote per ballot asked for (the same one if asked
//! again), results logged in seq order, gaps asked for.

use super::links::LinkState;
use super::{Client, ClientOutput};
use crate::ballot_log::LogLine;
use crate::link::ConnId;
use crate::proto::limits::MAX_OPEN_BALLOTS;
use crate::proto::{ClientMsg, Seq, Tally, View};
use log::{debug, warn};

impl Client {
    /// Votes on ballots `first .. first + count` (those not logged yet), to every server
    /// it is linked to: one `Votes` per server for everything asked in one loop turn.
    pub(super) fn vote(&mut self, view: View, first: Seq, count: u32) {
        let Some(current) = self.view else {
            return;
        };
        // No server has more ballots open than this; a larger count is not honoured.
        let count = u64::from(count).min(MAX_OPEN_BALLOTS);
        let policy = self.cfg.policy;
        let mut votes = Vec::new();
        for seq in (first.0.max(self.log.last.0 + 1)..first.0.saturating_add(count)).map(Seq) {
            let yes = self.cast.get_or_cast(seq, |seq| policy.vote(seq.0));
            votes.push((seq, yes));
        }
        if votes.is_empty() {
            return;
        }
        debug!(
            "vote client={} first={} count={} view={view}",
            self.cfg.id,
            votes[0].0,
            votes.len()
        );
        let mut ups = self
            .links
            .iter()
            .filter(|l| matches!(l.state, LinkState::Up(_)))
            .count();
        for link in &self.links {
            let LinkState::Up(conn) = link.state else {
                continue;
            };
            ups -= 1;
            // Fold into this turn's Votes to that server if it is the last thing queued
            // for that connection (never past another message: order is kept).
            let last_to_conn = self.out.iter_mut().rev().find(|o| match o {
                ClientOutput::Send(to, _)
                | ClientOutput::Hello(to, _)
                | ClientOutput::Close(to) => *to == conn,
                ClientOutput::Dial(_) | ClientOutput::Promise(_) | ClientOutput::Append(_) => false,
            });
            match last_to_conn {
                Some(ClientOutput::Send(
                    _,
                    ClientMsg::Votes {
                        view,
                        votes: pending,
                    },
                )) if *view == current.number => {
                    pending.extend_from_slice(&votes);
                }
                _ => self.out.push_back(ClientOutput::Send(
                    conn,
                    ClientMsg::Votes {
                        view: current.number,
                        // The last link takes the list itself.
                        votes: if ups == 0 {
                            std::mem::take(&mut votes)
                        } else {
                            votes.clone()
                        },
                    },
                )),
            }
        }
    }

    pub(super) fn deliver(&mut self, conn: ConnId, seq: Seq, tally: Tally) {
        if seq <= self.log.last {
            return; // a duplicate: results are idempotent by seq
        }
        if seq != self.log.last.next() {
            let from = self.log.last.next();
            if self.resend_asked != Some(from) {
                warn!(
                    "result-gap client={} expected={from} got={seq}",
                    self.cfg.id
                );
                self.resend_asked = Some(from);
                self.out.push_back(ClientOutput::Send(
                    conn,
                    ClientMsg::Resend {
                        view: self.view.map_or(View(0), |v| v.number),
                        from,
                    },
                ));
            }
            return;
        }
        self.log.push(tally);
        self.cast.logged_through(seq);
        self.out
            .push_back(ClientOutput::Append(LogLine { seq, tally }));
    }
}
