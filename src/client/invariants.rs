//! The rules a client's state keeps after every input: checked at the end of every
//! `handle_*` in debug builds, and by the simulator after every input in every build.

use super::Client;
use crate::proto::limits::MAX_RECOVERY_TAIL;

/// A rule of the client's state that broke: which, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub rule: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

impl Client {
    /// The rules the client's state keeps after every input.
    pub fn invariants(&self) -> Result<(), Broken> {
        let broken = |rule, detail| Err(Broken { rule, detail });
        if let Some(view) = self.view.filter(|v| v.number > self.promised()) {
            return broken(
                "promise-covers-the-view-followed",
                format!("follows {} with promise {}", view.number, self.promised()),
            );
        }
        if let Some(view) = self.promised_view.filter(|v| v.number > self.promised()) {
            return broken(
                "promise-covers-the-proposal-accepted",
                format!("accepted {} with promise {}", view.number, self.promised()),
            );
        }
        if let Err(detail) = self.cast.check(self.log.last) {
            return broken("votes-only-on-unlogged-ballots", detail);
        }
        let recent = &self.log.recent;
        if recent.len() > MAX_RECOVERY_TAIL || recent.len() as u64 > self.log.last.0 {
            return broken(
                "recent-tail-within-the-log",
                format!("{} recent of {} logged", recent.len(), self.log.last),
            );
        }
        for (i, link) in self.links.iter().enumerate() {
            if self.links[..i].iter().any(|l| l.addr == link.addr) {
                return broken("one-link-per-server", format!("two links to {}", link.addr));
            }
        }
        if self.deferred.is_some() && self.lease_holder.is_none() {
            return broken(
                "a-deferred-proposal-waits-on-a-holder",
                "a deferred proposal with no lease holder".into(),
            );
        }
        Ok(())
    }
}
