//! The client core fed arbitrary sequences of server messages, dials completing or
//! failing, closes, timer firings and a leave, starting from an arbitrary log position and
//! promise. Its invariants are checked after every input; a panic is a finding.
#![no_main]

#[path = "input.rs"]
mod input;

use input::Input;
use libfuzzer_sys::fuzz_target;
use pbvote::ballot_log::LogEnd;
use pbvote::client::policy::Policy;
use pbvote::client::{Client, ClientConfig, ClientOutput, Promised};
use pbvote::link::ConnId;
use pbvote::proto::limits::MAX_RECOVERY_TAIL;
use pbvote::proto::{ClientId, NodeId, Seq, View};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MAX_INPUTS: usize = 400;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let servers: Vec<SocketAddr> = vec![input.addr(), input.addr()];
    let cfg = ClientConfig {
        id: ClientId("c0".into()),
        servers,
        policy: if input.bit() { Policy::Yes } else { Policy::No },
        until: input.bit().then(|| Seq(1 + input.num() % 40)),
        redial: Duration::from_millis(200),
    };
    let last = Seq(input.num() % 100);
    let mut recent = input.list(|i| i.tally());
    recent.truncate((last.0 as usize).min(MAX_RECOVERY_TAIL));
    let log = LogEnd {
        last,
        recent: recent.into(),
        before_recent: input.digest(),
    };
    let promised = Promised {
        view: View(input.num() % 10),
        servers: input.list(|i| i.addr()),
        proposer: input.bit().then(|| NodeId(input.num() % 3)),
        followed: input.record(),
        accepted: input.record(),
    };
    let mut now = Instant::now();
    let mut client = Client::new(cfg, log, &promised, now);
    let mut open: Vec<(ConnId, SocketAddr)> = Vec::new();
    let mut dials: Vec<SocketAddr> = Vec::new();
    let mut next_slot = 0u32;
    for _ in 0..MAX_INPUTS {
        while let Some(out) = client.poll_output() {
            match out {
                ClientOutput::Dial(addr) => dials.push(addr),
                ClientOutput::Close(c) => open.retain(|(o, _)| *o != c),
                _ => {}
            }
        }
        if let Err(broken) = client.invariants() {
            panic!("invariant broken: {broken}");
        }
        if input.is_empty() {
            break;
        }
        match input.byte() % 8 {
            0..=3 if !open.is_empty() => {
                let (c, _) = open[usize::from(input.byte()) % open.len()];
                let msg = input.server_msg();
                client.handle_msg(c, msg, now);
            }
            4 if !dials.is_empty() => {
                let addr = dials.remove(0);
                if input.bit() {
                    let c = ConnId {
                        slot: next_slot,
                        gen: 0,
                    };
                    next_slot += 1;
                    open.push((c, addr));
                    client.handle_connected(c, addr, now);
                } else {
                    client.handle_dial_failed(addr, now);
                }
            }
            5 if !open.is_empty() => {
                let (c, _) = open.remove(usize::from(input.byte()) % open.len());
                client.handle_closed(c, now);
            }
            6 => {
                now += Duration::from_millis(input.num() % 2000);
                if client.poll_timeout().is_some_and(|t| t <= now) {
                    client.handle_timeout(now);
                }
            }
            7 => client.leave(now),
            _ => {}
        }
    }
});
