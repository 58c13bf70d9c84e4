//! Which registered clients are voters: the membership, part of every view. It changes
//! only through a view change that a majority of the old membership *and* a majority of
//! the new one accepted (joint consensus in one step), so any two memberships that can
//! install anything have a member in common; docs/PROTOCOL.md §6 argues it.

/// A set of client indexes (the registry's), with its size kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    is: Vec<bool>,
    count: usize,
}

impl Members {
    pub fn from_indexes(indexes: impl IntoIterator<Item = u32>) -> Members {
        let mut members = Members::default();
        for idx in indexes {
            members.insert(idx);
        }
        members
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn contains(&self, idx: u32) -> bool {
        self.is.get(idx as usize).copied().unwrap_or(false)
    }

    pub fn insert(&mut self, idx: u32) {
        let i = idx as usize;
        if i >= self.is.len() {
            self.is.resize(i + 1, false);
        }
        if !self.is[i] {
            self.is[i] = true;
            self.count += 1;
        }
    }

    /// Accepts needed from this membership: more than half of it. An empty membership
    /// has nobody who could have seen anything, so it needs none.
    pub fn majority(&self) -> usize {
        if self.count == 0 {
            0
        } else {
            self.count / 2 + 1
        }
    }

    /// The member indexes, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.is
            .iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(i, _)| i as u32)
    }

    /// One past the highest member index (0 if empty).
    pub fn bound(&self) -> u32 {
        self.is.iter().rposition(|&m| m).map_or(0, |i| i as u32 + 1)
    }

    /// `self` with `others` added.
    pub fn union(&self, others: impl IntoIterator<Item = u32>) -> Members {
        let mut members = self.clone();
        for idx in others {
            members.insert(idx);
        }
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities_of_two_memberships_one_apart_share_a_member() {
        let old = Members::from_indexes([0, 1, 2]);
        let new = old.union([3]);
        assert_eq!((old.majority(), new.majority()), (2, 3));
        assert_eq!(Members::default().majority(), 0);
        assert_eq!(new.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(new.bound(), 4);
        assert!(new.contains(3) && !old.contains(3) && !old.contains(99));
    }
}
