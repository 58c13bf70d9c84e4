//! pbvote: a primary-backup poll collection service.
//!
//! - [`proto`]: every message, the frame codec and its limits (no I/O);
//! - [`node`] and [`client`]: the server and client as pure state machines;
//! - [`reactor`]: the only code that touches sockets, clocks, files, signals and processes;
//! - [`sim`]: the deterministic simulator, the cores' second caller;
//! - [`check`]: the log checker for G1-G3.

pub mod ballot_log;
pub mod bench;
pub mod check;
pub mod cli;
pub mod client;
pub mod decode;
pub mod link;
pub mod node;
pub mod proto;
pub mod reactor;
pub mod sim;
pub mod watch;
