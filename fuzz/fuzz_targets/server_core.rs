//! The server core fed arbitrary sequences of inputs: hellos, client and peer messages,
//! timer firings, dials completing or failing, closes, drains, a child's exit; as the
//! reactor would give them (a message only on a link whose hello said its kind). Its
//! invariants are checked after every input; a panic is a finding.
#![no_main]

#[path = "input.rs"]
mod input;

use input::Input;
use libfuzzer_sys::fuzz_target;
use pbvote::link::ConnId;
use pbvote::node::{Node, NodeConfig, Output, StartRole};
use pbvote::proto::{LinkKind, NodeId};
use std::time::{Duration, Instant};

const SLOTS: usize = 6;
const MAX_INPUTS: usize = 400;

#[derive(Clone, Copy, PartialEq)]
enum Link {
    Free,
    Accepted,
    Client,
    Peer,
    Done,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let start = if input.bit() {
        StartRole::Primary
    } else {
        StartRole::Backup {
            join: input.addr(),
        }
    };
    let cfg = NodeConfig {
        node: NodeId(1 + u64::from(input.byte() % 3)),
        listen: "127.0.0.1:7000".parse().expect("addr"),
        start,
        heartbeat: Duration::from_millis(100),
        miss_limit: 1 + u32::from(input.byte() % 5),
        backup_start_delay: Duration::from_millis(u64::from(input.byte()) * 4),
        ballot_interval: Duration::from_millis(u64::from(input.byte() % 4) * 10),
        ballots: input.bit().then(|| 1 + u64::from(input.byte() % 80)),
        min_clients: 1 + usize::from(input.byte() % 3),
        window: 1 + u64::from(input.byte() % 4),
        spawn_backup: input.bit(),
        absent_after: input.bit().then(|| Duration::from_millis(50 + u64::from(input.byte()) * 10)),
    };
    if cfg.validate().is_err() {
        return;
    }
    let t0 = Instant::now();
    let mut now = t0;
    let mut node = Node::new(cfg, now);
    let mut links = [Link::Free; SLOTS];
    let mut gens = [0u32; SLOTS];
    let mut dials = Vec::new();
    let conn = |slot: usize, gens: &[u32; SLOTS]| ConnId {
        slot: slot as u32,
        gen: gens[slot],
    };
    for _ in 0..MAX_INPUTS {
        if input.is_empty() {
            break;
        }
        let slot = usize::from(input.byte()) % SLOTS;
        let c = conn(slot, &gens);
        match input.byte() % 10 {
            0 | 1 if matches!(links[slot], Link::Free | Link::Done) => {
                if links[slot] == Link::Done {
                    gens[slot] += 1;
                }
                let c = conn(slot, &gens);
                let hello = input.hello();
                links[slot] = match hello.link_kind() {
                    LinkKind::Client => Link::Client,
                    LinkKind::Peer => Link::Peer,
                    LinkKind::Status | LinkKind::Admin => Link::Accepted,
                };
                node.handle_hello(c, hello, now);
            }
            2 | 3 if links[slot] == Link::Client => {
                let msg = input.client_msg();
                node.handle_client_msg(c, msg, now);
            }
            4 if links[slot] == Link::Peer => {
                let msg = input.peer_msg();
                node.handle_peer_msg(c, msg, now);
            }
            5 => {
                now += Duration::from_millis(input.num() % 2000);
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    node.handle_timeout(now);
                }
            }
            6 if !matches!(links[slot], Link::Free | Link::Done) => {
                links[slot] = Link::Done;
                node.handle_closed(c, now);
            }
            7 if !matches!(links[slot], Link::Free | Link::Done) => node.handle_drained(c),
            8 if !dials.is_empty() => {
                let addr = dials.remove(0);
                if input.bit() && matches!(links[slot], Link::Free | Link::Done) {
                    if links[slot] == Link::Done {
                        gens[slot] += 1;
                    }
                    links[slot] = Link::Peer;
                    node.handle_connected(conn(slot, &gens), addr, now);
                } else {
                    node.handle_dial_failed(addr, now);
                }
            }
            9 => node.handle_child_exit(now),
            _ => {}
        }
        // What the reactor does with the outputs: dials wait for an input above, closes
        // close (it tells the core once the output is written).
        let mut closed = Vec::new();
        let mut exited = false;
        while let Some(out) = node.poll_output() {
            match out {
                Output::Dial(addr) => dials.push(addr),
                Output::Close(c, _) => closed.push(c),
                Output::Exit(_) => exited = true,
                _ => {}
            }
        }
        for c in closed {
            let slot = c.slot as usize;
            if gens[slot] == c.gen && !matches!(links[slot], Link::Free | Link::Done) {
                links[slot] = Link::Done;
                node.handle_closed(c, now);
            }
        }
        if let Err(broken) = node.invariants() {
            panic!("invariant broken: {broken}");
        }
        if exited {
            return;
        }
    }
});
