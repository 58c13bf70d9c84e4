//! How a client votes. A pure function of (policy, seq), so a re-asked vote is always the
//! same vote, and the log checker can recompute every expected tally.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Yes,
    No,
    Random { seed: u64 },
}

impl Policy {
    pub fn vote(&self, seq: u64) -> bool {
        match *self {
            Policy::Yes => true,
            Policy::No => false,
            Policy::Random { seed } => {
                splitmix64(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 1 == 1
            }
        }
    }

    /// `--policy random` without `--seed`: a seed derived from the client id, so the same
    /// client votes the same way after a restart.
    pub fn seed_from_id(id: &str) -> u64 {
        // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
        id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Yes => f.write_str("yes"),
            Policy::No => f.write_str("no"),
            Policy::Random { seed } => write!(f, "random:{seed}"),
        }
    }
}

/// `yes`, `no`, or `random:SEED` (the checker's spelling; the client's `--policy random`
/// takes the seed from `--seed`).
impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "yes" => Ok(Policy::Yes),
            "no" => Ok(Policy::No),
            _ => match s.strip_prefix("random:").map(str::parse) {
                Some(Ok(seed)) => Ok(Policy::Random { seed }),
                _ => Err(format!("policy must be yes, no or random:SEED, not {s:?}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_policy_is_stable_and_mixed() {
        let p = Policy::Random { seed: 42 };
        let votes: Vec<bool> = (1..=200).map(|s| p.vote(s)).collect();
        assert_eq!(votes, (1..=200).map(|s| p.vote(s)).collect::<Vec<_>>());
        let yes = votes.iter().filter(|v| **v).count();
        assert!((60..140).contains(&yes), "{yes} yes of 200");
    }

    #[test]
    fn parses_what_it_prints() {
        for p in [Policy::Yes, Policy::No, Policy::Random { seed: 7 }] {
            assert_eq!(p.to_string().parse::<Policy>(), Ok(p));
        }
        assert!("maybe".parse::<Policy>().is_err());
    }
}
