//! A cold restart: a fresh primary found clients with history (both replicas had died).
//! It rebuilds the results from the tails of the clients' logs, which their `Accept`s
//! carry, before it acts; docs/PROTOCOL.md §9.

use crate::proto::{Seq, Tally};
use log::warn;

/// The longest log tail the clients reported so far.
#[derive(Debug, Default)]
pub struct Recovery {
    /// `(its last seq, its tallies)`.
    longest: Option<(Seq, Vec<Tally>)>,
}

impl Recovery {
    /// Keeps the longest log tail a client reported; the clients' logs must agree.
    pub fn add_tail(&mut self, last_seq: Seq, tail: Vec<Tally>) {
        let tail_first = last_seq.0 + 1 - tail.len().min(last_seq.0 as usize) as u64;
        if let Some((best_last, best)) = &self.longest {
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
        if last_seq.0 >= tail.len() as u64 {
            self.longest = Some((last_seq, tail));
        }
    }

    /// The rebuilt history: `(first seq, tallies)`, if any client had one.
    pub fn into_results(self) -> Option<(u64, Vec<Tally>)> {
        self.longest
            .map(|(last, tail)| (last.0 + 1 - tail.len() as u64, tail))
    }
}
