//! The client log file format, `<seq> <yes> <no>\n`, in one place: the client writes it,
//! reads it back at start, and the checker judges it.

use crate::proto::limits::MAX_RECOVERY_TAIL;
use crate::proto::{HistoryDigest, Seq, Tally};
use std::collections::VecDeque;
use std::fmt;

/// What a client keeps in memory of its log `1..=last`: its last tallies (what a
/// cold-restarted primary rebuilds the history from, at most [`MAX_RECOVERY_TAIL`]) and
/// the digest of the log before them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogEnd {
    pub last: Seq,
    pub recent: VecDeque<Tally>,
    pub before_recent: HistoryDigest,
}

impl LogEnd {
    /// Of a log holding `lines`, which are `1..=n` in order.
    pub fn of(lines: &[LogLine]) -> LogEnd {
        let mut end = LogEnd::default();
        for line in lines {
            end.push(line.tally);
        }
        end
    }

    /// The next result, `last + 1`, was logged.
    pub fn push(&mut self, tally: Tally) {
        if self.recent.len() == MAX_RECOVERY_TAIL {
            if let Some(oldest) = self.recent.pop_front() {
                let seq = Seq(self.last.0 - MAX_RECOVERY_TAIL as u64 + 1);
                self.before_recent = self.before_recent.then(seq, oldest);
            }
        }
        self.recent.push_back(tally);
        self.last = self.last.next();
    }

    /// The seq of the first of `recent`.
    pub fn recent_first(&self) -> Seq {
        Seq(self.last.0 + 1 - self.recent.len() as u64)
    }

    /// The digest of the whole log.
    pub fn digest(&self) -> HistoryDigest {
        let recent = self.recent.iter().copied();
        self.before_recent.over(self.recent_first(), recent)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub seq: Seq,
    pub tally: Tally,
}

impl LogLine {
    /// Appends the line, newline included, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // By hand: every client writes one per ballot, and `fmt` was a visible share of
        // the bench's client work.
        push_decimal(out, self.seq.0);
        out.push(b' ');
        push_decimal(out, u64::from(self.tally.yes));
        out.push(b' ');
        push_decimal(out, u64::from(self.tally.no));
        out.push(b'\n');
    }
}

/// Digit by digit, most significant first: three numbers go into every log line, and a
/// `memcpy` call for a few bytes cost more than the digits (musl's above all).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut scale = 1;
    while scale <= n / 10 {
        scale *= 10;
    }
    loop {
        out.push(b'0' + (n / scale % 10) as u8);
        if scale == 1 {
            return;
        }
        scale /= 10;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub what: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// The parsed lines, and whether the text ended in an unterminated line (a write cut short
/// by a crash), which is not included. Order and continuity are the checker's business.
pub fn parse(text: &str) -> Result<(Vec<LogLine>, bool), ParseError> {
    let mut lines = Vec::new();
    let mut rest = text;
    let mut n = 0;
    while !rest.is_empty() {
        n += 1;
        let Some(end) = rest.find('\n') else {
            return Ok((lines, true));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        lines.push(parse_line(line).map_err(|what| ParseError { line: n, what })?);
    }
    Ok((lines, false))
}

fn parse_line(line: &str) -> Result<LogLine, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [seq, yes, no] = fields[..] else {
        return Err(format!("expected `<seq> <yes> <no>`, got {line:?}"));
    };
    let num = |s: &str, what: &str| -> Result<u64, String> {
        s.parse::<u64>()
            .map_err(|_| format!("{what} is not a number in {line:?}"))
    };
    let small = |v: u64, what: &str| -> Result<u32, String> {
        u32::try_from(v).map_err(|_| format!("{what} out of range in {line:?}"))
    };
    Ok(LogLine {
        seq: Seq(num(seq, "seq")?),
        tally: Tally {
            yes: small(num(yes, "yes count")?, "yes count")?,
            no: small(num(no, "no count")?, "no count")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_flags_a_torn_tail() {
        let mut out = Vec::new();
        for s in 1..=3 {
            LogLine {
                seq: Seq(s),
                tally: Tally { yes: 3, no: 2 },
            }
            .write_to(&mut out);
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "1 3 2\n2 3 2\n3 3 2\n");
        let (lines, torn) = parse(&text).unwrap();
        assert_eq!((lines.len(), torn), (3, false));
        let (lines, torn) = parse("1 3 2\n2 3").unwrap();
        assert_eq!((lines.len(), torn), (1, true));
        assert_eq!(parse("1 3 2\nx 1 1\n").unwrap_err().line, 2);
        assert!(parse("1 3 2 \n").is_err());
    }
}

#[cfg(test)]
mod log_end_tests {
    use super::*;

    /// The digest kept in pieces (the tallies a cold restart needs, and the digest before
    /// them) is the digest of the whole log, however long.
    #[test]
    fn the_log_end_digests_the_whole_log() {
        let lines: Vec<LogLine> = (1..=200u32)
            .map(|s| LogLine {
                seq: Seq(u64::from(s)),
                tally: Tally {
                    yes: s % 3,
                    no: s % 5,
                },
            })
            .collect();
        let whole =
            |n: usize| HistoryDigest::EMPTY.over(Seq(1), lines[..n].iter().map(|l| l.tally));
        for n in [0, 1, MAX_RECOVERY_TAIL, MAX_RECOVERY_TAIL + 1, 200] {
            let end = LogEnd::of(&lines[..n]);
            assert_eq!(end.last, Seq(n as u64));
            assert_eq!(end.recent.len(), n.min(MAX_RECOVERY_TAIL));
            assert_eq!(end.digest(), whole(n), "{n} lines");
            assert_eq!(end.before_recent, whole(n - end.recent.len()), "{n} lines");
        }
        assert_ne!(whole(3), whole(4));
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn lines_print_like_format_at_the_edges() {
        for (seq, yes, no) in [
            (0, 0, 0),
            (9, 10, 99),
            (1_000_000, 100_000, 7),
            (u64::MAX, u32::MAX, 1),
        ] {
            let mut out = Vec::new();
            LogLine {
                seq: Seq(seq),
                tally: Tally { yes, no },
            }
            .write_to(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{seq} {yes} {no}\n")
            );
        }
    }
}
