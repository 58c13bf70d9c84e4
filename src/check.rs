//! The one log checker, used by the simulator, the tests, the bench and `pbvote check-logs`.
//! Given every client's log (and, where known, how it votes) it reports each violation of
//! G1 (exactly once, in order), G2 (all logs agree) and G3 (every vote counted).

use crate::ballot_log::{self, LogLine};
use crate::client::policy::Policy;
use crate::proto::{Seq, Tally};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One client's log as found.
#[derive(Clone, Debug)]
pub struct ClientLog {
    pub name: String,
    pub lines: Vec<LogLine>,
    /// The file ended in an unterminated line.
    pub torn: bool,
    /// How the client votes; `None` checks totals only.
    pub policy: Option<Policy>,
}

impl ClientLog {
    pub fn parse(name: &str, text: &str, policy: Option<Policy>) -> Result<ClientLog, String> {
        let (lines, torn) = ballot_log::parse(text).map_err(|e| format!("{name}: {e}"))?;
        Ok(ClientLog {
            name: name.to_string(),
            lines,
            torn,
            policy,
        })
    }
}

/// What the logs must show beyond G1-G3 themselves.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Every log holds exactly 1..=N.
    pub ballots: Option<u64>,
    /// The electorate of every ballot, when it is not exactly the clients whose logs are
    /// given.
    pub voters: Option<u32>,
    /// Where known, a ballot's own electorate (indexes into the logs given): it wins over
    /// `voters` for that ballot.
    pub electorates: BTreeMap<Seq, Vec<usize>>,
    /// Logs of clients that left the membership: each may stop short of `ballots` (it
    /// must still be 1..k, and agree with the others).
    pub left: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub guarantee: &'static str,
    pub log: String,
    pub seq: Option<Seq>,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "{} {} seq={}: {}",
                self.guarantee, self.log, seq, self.what
            ),
            None => write!(f, "{} {}: {}", self.guarantee, self.log, self.what),
        }
    }
}

pub fn check(logs: &[ClientLog], expect: &Expect) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut v = |guarantee, log: &str, seq, what: String| {
        found.push(Violation {
            guarantee,
            log: log.to_string(),
            seq,
            what,
        })
    };
    // G1: each log is 1, 2, 3, ... with nothing torn, and as long as asked.
    for log in logs {
        for (i, line) in log.lines.iter().enumerate() {
            let want = Seq(i as u64 + 1);
            if line.seq != want {
                let what = if line.seq < want {
                    "repeated or out of order".to_string()
                } else {
                    format!("gap: expected {want}")
                };
                v("G1", &log.name, Some(line.seq), what);
                break;
            }
        }
        if log.torn {
            v("G1", &log.name, None, "ends in a torn line".to_string());
        }
        if let Some(n) = expect.ballots.filter(|_| !expect.left.contains(&log.name)) {
            if log.lines.len() as u64 != n {
                v(
                    "G1",
                    &log.name,
                    None,
                    format!("holds {} lines, expected {n}", log.lines.len()),
                );
            }
        }
    }
    // G2: every log that has a seq has the same tally for it.
    let mut agreed: BTreeMap<Seq, (Tally, &str)> = BTreeMap::new();
    for log in logs {
        for line in &log.lines {
            match agreed.get(&line.seq) {
                None => {
                    agreed.insert(line.seq, (line.tally, &log.name));
                }
                Some((tally, first)) if *tally != line.tally => v(
                    "G2",
                    &log.name,
                    Some(line.seq),
                    format!(
                        "{} {} here but {} {} in {first}",
                        line.tally.yes, line.tally.no, tally.yes, tally.no
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    // G3: every voter's vote counted exactly once.
    let voters = expect.voters.unwrap_or(logs.len() as u32);
    let policies: Option<Vec<Policy>> = logs.iter().map(|l| l.policy).collect();
    let policies = policies.filter(|p| p.len() as u32 == voters);
    for (seq, (tally, log)) in &agreed {
        // Without the servers' electorates, a log that left (it stops short) is no voter
        // of the ballots after its last line.
        let implied: Vec<usize>;
        let electorate = match expect.electorates.get(seq) {
            Some(known) => Some(known),
            None if expect.electorates.is_empty()
                && expect.voters.is_none()
                && !expect.left.is_empty() =>
            {
                implied = (0..logs.len())
                    .filter(|&i| {
                        !expect.left.contains(&logs[i].name)
                            || logs[i].lines.last().is_some_and(|l| l.seq >= *seq)
                    })
                    .collect();
                Some(&implied)
            }
            None => None,
        };
        if let Some(electorate) = electorate {
            let yes = electorate
                .iter()
                .filter(|&&i| {
                    logs.get(i)
                        .and_then(|l| l.policy)
                        .is_some_and(|p| p.vote(seq.0))
                })
                .count() as u32;
            if tally.yes + tally.no != electorate.len() as u32 || tally.yes != yes {
                v(
                    "G3",
                    log,
                    Some(*seq),
                    format!(
                        "tally {} {}, but its {} voters cast {yes} yes",
                        tally.yes,
                        tally.no,
                        electorate.len()
                    ),
                );
            }
            continue;
        }
        if tally.yes + tally.no != voters {
            v(
                "G3",
                log,
                Some(*seq),
                format!("{} votes counted, expected {voters}", tally.yes + tally.no),
            );
        } else if let Some(policies) = &policies {
            let yes = policies.iter().filter(|p| p.vote(seq.0)).count() as u32;
            if tally.yes != yes {
                v(
                    "G3",
                    log,
                    Some(*seq),
                    format!("{} yes counted, the voters cast {yes}", tally.yes),
                );
            }
        }
    }
    found
}

/// The same guarantees checked line by line as they are appended (the simulator calls it
/// after every step), so a violation is caught at the step that made it.
pub struct LiveCheck {
    voters: u32,
    policies: Vec<Policy>,
    /// The first tally any log recorded for each seq: `agreed[i]` is seq i + 1.
    agreed: Vec<Tally>,
    /// Per log, the last seq appended.
    last: Vec<Seq>,
    /// Where the caller knows it, each ballot's electorate (log indexes), and whether that
    /// came from a lasting copy; a ballot without one counts every log's voter.
    electorates: BTreeMap<Seq, (Vec<usize>, bool)>,
    /// The highest seq with an electorate from a lasting copy.
    lasting_known: Seq,
    /// Clients an operator removed: a ballot open at the removal may count without them.
    removed: BTreeSet<usize>,
    /// Seqs whose electorate came from servers that all died (a cold restart) before any
    /// log held the ballot: any word from a later server replaces it.
    from_dead: BTreeSet<Seq>,
}

impl LiveCheck {
    pub fn new(voters: u32, policies: Vec<Policy>) -> LiveCheck {
        LiveCheck {
            voters,
            last: vec![Seq(0); policies.len()],
            policies,
            agreed: Vec::new(),
            electorates: BTreeMap::new(),
            lasting_known: Seq(0),
            removed: BTreeSet::new(),
            from_dead: BTreeSet::new(),
        }
    }

    /// One more log, from a voter that votes `policy`; returns its index.
    pub fn add_log(&mut self, policy: Policy) -> usize {
        self.policies.push(policy);
        self.last.push(Seq(0));
        self.policies.len() - 1
    }

    /// Ballot `seq`'s electorate, as a server holds it. `lasting`: from a copy that
    /// survives the server (a backup's, or a primary's in a view without one); such a
    /// word replaces one that was not, and two lasting ones must agree, or the servers
    /// disagree on whose votes the ballot counts. A word that is not lasting is kept only
    /// until a lasting one comes, for a ballot whose only copy publishes before that.
    pub fn electorate(
        &mut self,
        seq: Seq,
        mut voters: Vec<usize>,
        lasting: bool,
    ) -> Result<(), Violation> {
        voters.sort_unstable();
        if self.from_dead.remove(&seq) {
            self.electorates.remove(&seq);
        }
        match self.electorates.get(&seq) {
            Some((known, true)) if lasting && *known != voters => Err(Violation {
                guarantee: "G3",
                log: "servers".to_string(),
                seq: Some(seq),
                what: format!("electorate {voters:?} here but {known:?} before"),
            }),
            Some((_, true)) => Ok(()),
            Some((_, false)) if !lasting => Ok(()),
            Some((_, false)) | None => {
                self.electorates.insert(seq, (voters, lasting));
                if lasting {
                    self.lasting_known = self.lasting_known.max(seq);
                }
                Ok(())
            }
        }
    }

    /// Every server died: what they held of ballots no log holds yet lasts no more. A
    /// fresh primary opens those seqs afresh with the members it recovered, and its word
    /// replaces theirs; a result still on its way from a dead server keeps theirs.
    pub fn cold_restart(&mut self) {
        let logged = self.last.iter().copied().max().unwrap_or(Seq(0));
        self.forget_electorates_after(logged);
    }

    /// What servers that all died held of ballots after `logged` (no log holds them) lasts
    /// no more, and a later server's word replaces it.
    fn forget_electorates_after(&mut self, logged: Seq) {
        for (&seq, (_, lasting)) in self.electorates.range_mut(logged.next()..) {
            *lasting = false;
            self.from_dead.insert(seq);
        }
        self.lasting_known = self.lasting_known.min(logged);
    }

    /// The highest seq whose electorate is known, from any copy (`lasting`: from one that
    /// lasts).
    pub fn electorates_known(&self, lasting: bool) -> Seq {
        if lasting {
            self.lasting_known
        } else {
            (self.electorates.keys().rev())
                .find(|seq| !self.from_dead.contains(seq))
                .copied()
                .unwrap_or(Seq(0))
        }
    }

    /// An operator removed client `log`: the ballots open then stop waiting for its vote,
    /// so each may count with or without it.
    pub fn removed(&mut self, log: usize) {
        self.removed.insert(log);
    }

    /// Log `log` is no more (its client removed while a cold restart recovered, its disk
    /// gone with it): what is agreed comes from `others` alone from now on.
    pub fn forget(&mut self, log: usize, others: &[&[LogLine]]) {
        self.last[log] = Seq(0);
        let longest = others.iter().map(|l| l.len()).max().unwrap_or(0);
        self.agreed.truncate(longest);
        // Only a recovery forgets a log: what the dead servers held of the ballots it
        // alone had logged is gone too (see `cold_restart`).
        self.forget_electorates_after(Seq(longest as u64));
        for (i, tally) in self.agreed.iter_mut().enumerate() {
            if let Some(line) = others.iter().find_map(|l| l.get(i)) {
                *tally = line.tally;
            }
        }
    }

    /// Every electorate known, for the batch checker.
    pub fn electorates(&self) -> BTreeMap<Seq, Vec<usize>> {
        let known = self.electorates.iter();
        known
            .map(|(seq, (voters, _))| (*seq, voters.clone()))
            .collect()
    }

    /// How many voters ballot `seq` has, if its electorate is known.
    pub fn electorate_len(&self, seq: Seq) -> Option<usize> {
        self.electorates.get(&seq).map(|(voters, _)| voters.len())
    }

    pub fn observe(&mut self, log: usize, name: &str, line: LogLine) -> Result<(), Violation> {
        let violation = |guarantee, what: String| Violation {
            guarantee,
            log: name.to_string(),
            seq: Some(line.seq),
            what,
        };
        let want = self.last[log].next();
        if line.seq != want {
            return Err(violation(
                "G1",
                format!("appended out of order: expected {want}"),
            ));
        }
        self.last[log] = line.seq;
        let idx = (line.seq.0 - 1) as usize;
        match self.agreed.get(idx) {
            Some(tally) if *tally != line.tally => {
                return Err(violation(
                    "G2",
                    format!(
                        "{} {} here but {} {} in another log",
                        line.tally.yes, line.tally.no, tally.yes, tally.no
                    ),
                ));
            }
            Some(_) => return Ok(()),
            None => {
                debug_assert_eq!(idx, self.agreed.len());
                self.agreed.push(line.tally);
            }
        }
        let counts = |voters: &[usize]| {
            let yes = voters
                .iter()
                .filter(|&&i| self.policies[i].vote(line.seq.0));
            (voters.len() as u32, yes.count() as u32)
        };
        let (voters, yes) = match self.electorates.get(&line.seq) {
            Some((electorate, lasting)) => {
                let mut expected = counts(electorate);
                let kept: Vec<usize> = (electorate.iter().copied())
                    .filter(|i| !self.removed.contains(i))
                    .collect();
                let without = counts(&kept);
                if (line.tally.yes + line.tally.no, line.tally.yes) == without {
                    // Counted without the removed: that is its electorate from now on.
                    expected = without;
                    let lasting = *lasting;
                    self.electorates.insert(line.seq, (kept, lasting));
                }
                expected
            }
            None => {
                let yes = self.policies.iter().filter(|p| p.vote(line.seq.0)).count();
                (self.voters, yes as u32)
            }
        };
        if line.tally.yes + line.tally.no != voters || line.tally.yes != yes {
            return Err(violation(
                "G3",
                format!(
                    "tally {} {} but the {voters} voters cast {yes} yes",
                    line.tally.yes, line.tally.no
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(name: &str, text: &str, policy: Policy) -> ClientLog {
        ClientLog::parse(name, text, Some(policy)).unwrap()
    }

    #[test]
    fn exact_logs_pass() {
        let logs = [
            log("a", "1 1 1\n2 1 1\n", Policy::Yes),
            log("b", "1 1 1\n2 1 1\n", Policy::No),
        ];
        assert_eq!(
            check(
                &logs,
                &Expect {
                    ballots: Some(2),
                    voters: None,
                    ..Expect::default()
                }
            ),
            vec![]
        );
    }

    /// `check-logs --left`: a log that left may stop short, and is no voter after its
    /// last line; it must still agree, and the others must still be whole.
    #[test]
    fn a_log_that_left_stops_short_and_votes_no_more() {
        let logs = [
            log("a", "1 1 1\n2 1 1\n3 1 0\n", Policy::Yes),
            log("b", "1 1 1\n2 1 1\n", Policy::No),
        ];
        let expect = |left: &[&str]| Expect {
            ballots: Some(3),
            left: left.iter().map(|l| l.to_string()).collect(),
            ..Expect::default()
        };
        assert_eq!(check(&logs, &expect(&["b"])), vec![]);
        let v = check(&logs, &expect(&[]));
        assert!(
            v.iter().any(|v| v.guarantee == "G1" && v.log == "b"),
            "{v:?}"
        );
        let disagree = [
            log("a", "1 1 1\n2 1 1\n3 1 0\n", Policy::Yes),
            log("b", "1 1 1\n2 0 2\n", Policy::No),
        ];
        let v = check(&disagree, &expect(&["b"]));
        assert!(v.iter().any(|v| v.guarantee == "G2"), "{v:?}");
    }

    #[test]
    fn each_guarantee_can_fail() {
        let dup = [
            log("a", "1 1 1\n1 1 1\n", Policy::Yes),
            log("b", "1 1 1\n", Policy::No),
        ];
        let v = check(&dup, &Expect::default());
        assert!(v.iter().any(|v| v.guarantee == "G1"), "{v:?}");

        let disagree = [
            log("a", "1 1 1\n", Policy::Yes),
            log("b", "1 2 0\n", Policy::No),
        ];
        let v = check(&disagree, &Expect::default());
        assert!(v.iter().any(|v| v.guarantee == "G2"), "{v:?}");

        let short = [
            log("a", "1 1 0\n", Policy::Yes),
            log("b", "1 1 0\n", Policy::No),
        ];
        let v = check(&short, &Expect::default());
        assert!(v.iter().any(|v| v.guarantee == "G3"), "{v:?}");

        let miscounted = [
            log("a", "1 0 2\n", Policy::Yes),
            log("b", "1 0 2\n", Policy::No),
        ];
        let v = check(&miscounted, &Expect::default());
        assert!(v.iter().any(|v| v.guarantee == "G3"), "{v:?}");

        let missing = [
            log("a", "1 1 1\n", Policy::Yes),
            log("b", "1 1 1\n", Policy::No),
        ];
        let v = check(
            &missing,
            &Expect {
                ballots: Some(2),
                voters: None,
                ..Expect::default()
            },
        );
        assert_eq!(v.len(), 2, "{v:?}");
    }
}
