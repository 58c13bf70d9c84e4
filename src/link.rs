//! How a pure core names a connection that its caller (the reactor or the simulator) owns.

use std::fmt;

/// A connection handle. `slot` is reused after a close; `gen` is not, so an output aimed at
/// a connection that closed in the same loop turn can never reach its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}", self.slot, self.gen)
    }
}
