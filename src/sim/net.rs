//! The simulated network: processes, connections, events in time order. Every link
//! delivers in order (as TCP does) after a random delay; a cut holds what crosses it, in
//! order, until it heals. One handler per kind of event.

use super::world::{Input, World, TURN};
use super::SimFailure;
use crate::link::ConnId;
use crate::node::StartRole;
use crate::proto::{ClientMsg, Hello, PeerMsg, ServerMsg};
use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Proc {
    Server(usize),
    Client(usize),
}

#[derive(Clone, Debug)]
pub(super) enum Payload {
    Hello(Hello),
    Client(ClientMsg),
    Server(ServerMsg),
    Peer(PeerMsg),
}

#[derive(Clone, Debug)]
pub(super) enum Event {
    /// The dial of `conn` completed: tell the dialer.
    Connected {
        conn: usize,
    },
    DialFailed {
        proc: Proc,
        addr: SocketAddr,
    },
    Deliver {
        conn: usize,
        to: Proc,
        payload: Payload,
    },
    /// `to` learns the connection closed; `remote`: the other end closed it (the news
    /// crosses the network), else `to` closed it itself.
    Closed {
        conn: usize,
        to: Proc,
        remote: bool,
    },
    /// SIGCHLD: the backup server `child` of `parent` exited.
    ChildExited {
        parent: usize,
    },
    ClientRestart {
        client: usize,
    },
    /// A client is SIGKILLed (and restarts from its log), drawn for a moment when no
    /// steady state holds: during a takeover.
    ClientCrash {
        client: usize,
    },
    /// A client that was not running starts for the first time (it joins).
    ClientStart {
        client: usize,
    },
    /// A client asks to leave, and exits once it is told `Left`.
    ClientLeave {
        client: usize,
    },
    /// A client is SIGKILLed and never comes back; an operator removes it a while later.
    ClientGone {
        client: usize,
    },
    OperatorRemoves {
        client: usize,
    },
    /// The operator looks whether the removal it asked for took.
    OperatorChecks {
        client: usize,
    },
    /// A fresh primary starts on the first address (after a cold restart).
    ColdStart,
    /// The cut from one host to another heals.
    Heal {
        from: Endpoint,
        to: Endpoint,
    },
    /// Deliver, in order, what a healed cut held on one direction of a connection.
    Release {
        conn: usize,
        side: usize,
    },
}

/// Where a cut applies: a server's address (so a replacement on the same address is cut
/// too, as on a real host) or a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Server(SocketAddr),
    Client(usize),
}

impl Event {
    /// Whom the event is for, if a process.
    pub(super) fn target(&self) -> Option<Proc> {
        match self {
            Event::Connected { .. } => None,
            Event::DialFailed { proc, .. } => Some(*proc),
            Event::Deliver { to, .. } | Event::Closed { to, .. } => Some(*to),
            Event::ChildExited { parent, .. } => Some(Proc::Server(*parent)),
            Event::ClientRestart { .. }
            | Event::ClientCrash { .. }
            | Event::ClientStart { .. }
            | Event::ClientLeave { .. }
            | Event::ClientGone { .. }
            | Event::OperatorRemoves { .. }
            | Event::OperatorChecks { .. }
            | Event::ColdStart
            | Event::Heal { .. }
            | Event::Release { .. } => None,
        }
    }
}

pub(super) struct SimConn {
    pub(super) dialer: Proc,
    pub(super) acceptor: Proc,
    /// Per direction (0: dialer to acceptor), the latest scheduled arrival: TCP is FIFO.
    pub(super) last_arrival: [Duration; 2],
    /// Per direction, when the sender crashed with output not yet written: what was due
    /// to arrive after this is lost (a prefix of the stream got out, as with a real
    /// SIGKILL between two writes).
    pub(super) lost_after: [Option<Duration>; 2],
    /// Each side stops receiving once it closed or was told of the close.
    pub(super) open: [bool; 2],
    /// The dialer was told the connection is up (before that, a close is a failed dial).
    pub(super) established: bool,
}

/// Which frame breaks its link when it is delivered (a script's request).
pub(super) type LinkBreak = Box<dyn Fn(&Payload) -> bool>;

pub(super) fn conn_id(conn: usize) -> ConnId {
    ConnId {
        slot: conn as u32,
        gen: 0,
    }
}

impl World {
    pub(super) fn schedule(&mut self, at: Duration, event: Event) {
        let id = self.events.len();
        self.events.push(Some(event));
        self.queue.push(Reverse((at, id as u64, id)));
    }

    pub(super) fn delay(&mut self) -> Duration {
        let max = self.scenario.max_delay.as_micros() as u64;
        Duration::from_micros(self.rng.range(0, max))
    }

    /// Whether `proc` can take an event now; a paused server takes it when it resumes.
    pub(super) fn deliverable(&mut self, proc: Proc, event: &Event) -> Option<bool> {
        match proc {
            Proc::Server(i) => {
                if !self.servers[i].alive {
                    return Some(false);
                }
                if let Some(until) = self.servers[i].paused_until.filter(|t| *t > self.now) {
                    self.schedule(until, event.clone());
                    return None;
                }
                Some(true)
            }
            Proc::Client(i) => Some(self.clients[i].core.is_some()),
        }
    }

    pub(super) fn pop_event(&mut self) -> Result<(), SimFailure> {
        let Some(Reverse((at, _, id))) = self.queue.pop() else {
            return Ok(());
        };
        self.now = self.now.max(at);
        let Some(event) = self.events[id].take() else {
            return Ok(());
        };
        self.dispatch(event)
    }

    /// The event at the head of the queue is a message for `proc` that arrives within
    /// the turn that `proc` began at `began`.
    pub(super) fn next_event_delivers_to(&self, proc: Proc, began: Duration) -> bool {
        self.queue.peek().is_some_and(|Reverse((at, _, id))| {
            *at <= began + TURN
                && matches!(self.events[*id], Some(Event::Deliver { to, .. }) if to == proc)
        })
    }

    pub(super) fn send(&mut self, from: Proc, conn: ConnId, payload: Payload) {
        let c = conn.slot as usize;
        let Some(sc) = self.conns.get(c) else {
            return;
        };
        let side = self.side(c, from);
        if !sc.open[side] {
            return;
        }
        let to = if side == 0 { sc.acceptor } else { sc.dialer };
        let at = (self.now + self.delay()).max(self.conns[c].last_arrival[side]);
        self.conns[c].last_arrival[side] = at;
        self.schedule(
            at,
            Event::Deliver {
                conn: c,
                to,
                payload,
            },
        );
    }

    pub(super) fn close(&mut self, from: Proc, conn: ConnId) {
        let c = conn.slot as usize;
        if c >= self.conns.len() {
            return; // not a simulated connection (a script's request)
        }
        let side = self.side(c, from);
        if !self.conns[c].open[side] {
            return;
        }
        let other = if side == 0 {
            self.conns[c].acceptor
        } else {
            self.conns[c].dialer
        };
        self.schedule(
            self.now,
            Event::Closed {
                conn: c,
                to: from,
                remote: false,
            },
        );
        self.tell_remote_close(c, side, other);
    }

    /// `other` hears that `side` closed connection `c`: after the data already sent.
    pub(super) fn tell_remote_close(&mut self, c: usize, side: usize, other: Proc) {
        let at = self.conns[c].last_arrival[side].max(self.now) + self.delay();
        self.conns[c].last_arrival[side] = at;
        self.schedule(
            at,
            Event::Closed {
                conn: c,
                to: other,
                remote: true,
            },
        );
    }

    pub(super) fn dial(&mut self, from: Proc, addr: SocketAddr) {
        let at = self.now + self.delay();
        match self.servers.iter().position(|s| s.addr == addr && s.alive) {
            Some(target) => {
                let conn = self.conns.len();
                self.conns.push(SimConn {
                    dialer: from,
                    acceptor: Proc::Server(target),
                    last_arrival: [at, at],
                    lost_after: [None, None],
                    open: [true, true],
                    established: false,
                });
                self.schedule(at, Event::Connected { conn });
            }
            None => self.schedule(at, Event::DialFailed { proc: from, addr }),
        }
    }

    pub(super) fn side(&self, conn: usize, proc: Proc) -> usize {
        usize::from(self.conns[conn].dialer != proc)
    }

    pub(super) fn proc_addr(&self, proc: Proc) -> SocketAddr {
        match proc {
            Proc::Server(i) => self.servers[i].addr,
            Proc::Client(i) => SocketAddr::from(([10, 0, 1, 1], 20000 + i as u16)),
        }
    }

    pub(super) fn endpoint(&self, proc: Proc) -> Endpoint {
        match proc {
            Proc::Server(i) => Endpoint::Server(self.servers[i].addr),
            Proc::Client(i) => Endpoint::Client(i),
        }
    }

    pub(super) fn is_cut(&self, from: Proc, to: Proc) -> bool {
        self.cuts
            .contains(&(self.endpoint(from), self.endpoint(to)))
    }

    /// Performs an event, unless a cut holds it back or its process cannot take it now.
    pub(super) fn dispatch(&mut self, event: Event) -> Result<(), SimFailure> {
        if self.held_at_cut(&event) {
            return Ok(());
        }
        if let Some(target) = event.target() {
            match self.deliverable(target, &event) {
                Some(true) => {}
                Some(false) | None => return Ok(()),
            }
        }
        match event {
            Event::Connected { conn } => self.on_connected(conn),
            Event::DialFailed { proc, addr } => {
                self.apply(proc, Input::DialFailed(addr))?;
                self.drain(proc)
            }
            Event::Closed { conn, to, .. } => self.on_closed(conn, to),
            Event::Deliver { conn, to, payload } => self.on_deliver(conn, to, payload),
            Event::ChildExited { parent } => {
                let proc = Proc::Server(parent);
                self.apply(proc, Input::ChildExited)?;
                self.drain(proc)
            }
            Event::Heal { from, to } => {
                self.heal(from, to);
                Ok(())
            }
            Event::Release { conn, side } => {
                let held = self.held.remove(&(conn, side)).unwrap_or_default();
                for event in held {
                    self.dispatch(event)?;
                }
                Ok(())
            }
            Event::ColdStart => {
                log::warn!("sim-cold-start t_ms={}", self.now.as_millis());
                let (p_addr, b_addr) = self.addrs;
                let i = self.add_server(StartRole::Primary, p_addr, b_addr, None)?;
                self.drain(Proc::Server(i))
            }
            Event::ClientLeave { client } => {
                let now = self.instant();
                let Some(core) = self.clients[client].core.as_mut() else {
                    // Down (a crash) just now: it asks once it is back.
                    let at = self.now + Duration::from_millis(100);
                    self.schedule(at, Event::ClientLeave { client });
                    return Ok(());
                };
                log::warn!("sim-leave client=c{client} t_ms={}", self.now.as_millis());
                core.leave(now);
                self.check_invariants(Proc::Client(client))?;
                self.drain(Proc::Client(client))
            }
            Event::ClientGone { client } => {
                if self.clients[client].gone {
                    return Ok(());
                }
                // Before the members assembled, one of them gone for good may be most of
                // the membership (which nothing could then change): wait for ballots. And
                // it is a fault: one at a time, once the service is steady (it struck 22 ms
                // after the primary's crash once, while a member that knew only the dead
                // primary's address could not help the takeover either: seed 22237).
                if self.clients[client].log.is_empty()
                    || !(self.steady() || self.scenario.beyond_model)
                {
                    let at = self.now + Duration::from_millis(100);
                    self.schedule(at, Event::ClientGone { client });
                    return Ok(());
                }
                self.lose_unwritten(Proc::Client(client));
                self.exit_client(client);
                let at = self.now + Duration::from_millis(self.rng.range(0, 500));
                self.schedule(at, Event::OperatorRemoves { client });
                Ok(())
            }
            Event::OperatorRemoves { client } => self.operator_removes(client),
            Event::OperatorChecks { client } => self.operator_checks(client),
            Event::ClientStart { client } => {
                log::warn!("sim-join client=c{client} t_ms={}", self.now.as_millis());
                self.start_client(client)?;
                self.drain(Proc::Client(client))
            }
            Event::ClientCrash { client } => {
                if self.clients[client].core.is_some() {
                    self.crash_client(client);
                }
                Ok(())
            }
            Event::ClientRestart { client } if self.clients[client].gone => Ok(()),
            Event::ClientRestart { client } => {
                log::warn!("sim-restart client=c{client} t_ms={}", self.now.as_millis());
                self.start_client(client)?;
                self.drain(Proc::Client(client))
            }
        }
    }

    /// A message or a remote close that meets a cut (or queues behind one held there)
    /// waits for the heal; a handshake across a cut is retried later, as TCP does.
    /// Returns whether `event` was held back.
    fn held_at_cut(&mut self, event: &Event) -> bool {
        let leg = match event {
            Event::Deliver { conn, to, .. }
            | Event::Closed {
                conn,
                to,
                remote: true,
            } => Some((*conn, *to)),
            Event::Connected { conn } => {
                let (d, a) = (self.conns[*conn].dialer, self.conns[*conn].acceptor);
                if self.is_cut(d, a) || self.is_cut(a, d) {
                    // The handshake is lost at the cut; TCP retries it.
                    let at = self.now + Duration::from_millis(200);
                    self.schedule(at, event.clone());
                    return true;
                }
                None
            }
            Event::Closed { remote: false, .. }
            | Event::DialFailed { .. }
            | Event::ChildExited { .. }
            | Event::ClientRestart { .. }
            | Event::ClientCrash { .. }
            | Event::ClientStart { .. }
            | Event::ClientLeave { .. }
            | Event::ClientGone { .. }
            | Event::OperatorRemoves { .. }
            | Event::OperatorChecks { .. }
            | Event::ColdStart
            | Event::Heal { .. }
            | Event::Release { .. } => None,
        };
        let Some((conn, to)) = leg else {
            return false;
        };
        let from = if self.conns[conn].dialer == to {
            self.conns[conn].acceptor
        } else {
            self.conns[conn].dialer
        };
        let key = (conn, self.side(conn, from));
        let queued = self.held.get(&key).is_some_and(|q| !q.is_empty());
        if queued || self.is_cut(from, to) {
            self.held.entry(key).or_default().push_back(event.clone());
            return true;
        }
        false
    }

    /// The dial of `conn` completed: up, or refused if the acceptor is gone.
    fn on_connected(&mut self, conn: usize) -> Result<(), SimFailure> {
        let dialer = self.conns[conn].dialer;
        let acceptor = self.conns[conn].acceptor;
        let addr = self.proc_addr(acceptor);
        let Some(true) = self.deliverable(dialer, &Event::Connected { conn }) else {
            return Ok(());
        };
        let acceptor_up = match acceptor {
            Proc::Server(i) => self.servers[i].alive,
            Proc::Client(_) => false,
        };
        if !self.conns[conn].open[0] {
            return Ok(());
        }
        if !acceptor_up || !self.conns[conn].open[1] {
            self.conns[conn].open = [false, false];
            self.apply(dialer, Input::DialFailed(addr))?;
            return self.drain(dialer);
        }
        self.conns[conn].established = true;
        self.apply(dialer, Input::Connected(conn_id(conn), addr))?;
        self.drain(dialer)
    }

    fn on_closed(&mut self, conn: usize, to: Proc) -> Result<(), SimFailure> {
        let side = self.side(conn, to);
        if !self.conns[conn].open[side] {
            return Ok(());
        }
        self.conns[conn].open[side] = false;
        self.apply(to, Input::Closed(conn_id(conn)))?;
        self.drain(to)
    }

    fn on_deliver(&mut self, conn: usize, to: Proc, payload: Payload) -> Result<(), SimFailure> {
        let side = self.side(conn, to);
        if !self.conns[conn].open[side] {
            return Ok(());
        }
        if self.conns[conn].lost_after[1 - side].is_some_and(|cut| self.now > cut) {
            return Ok(());
        }
        if let Some(input) = self.break_if_scripted(conn, &payload) {
            return input;
        }
        self.apply(to, Input::Frame(conn_id(conn), payload))?;
        if let Proc::Server(i) = to {
            let began = self
                .undrained
                .filter(|&(u, _)| u == i)
                .map_or(self.now, |(_, began)| began);
            if self.next_event_delivers_to(to, began) && self.rng.chance(1, 2) {
                self.undrained = Some((i, began));
                return Ok(());
            }
        }
        self.drain(to)
    }

    /// A scripted break: the link of a frame the script names goes down with that frame
    /// in flight (as a reset would), and both ends hear of it.
    fn break_if_scripted(
        &mut self,
        conn: usize,
        payload: &Payload,
    ) -> Option<Result<(), SimFailure>> {
        let breaks = self.break_on.as_ref().is_some_and(|b| b(payload));
        if !breaks {
            return None;
        }
        self.break_on = None;
        log::warn!(
            "sim-break t_ms={} conn={conn} in_flight={payload:?}",
            self.now.as_millis()
        );
        for side in 0..2 {
            if self.conns[conn].open[side] {
                let proc = if side == 0 {
                    self.conns[conn].dialer
                } else {
                    self.conns[conn].acceptor
                };
                self.schedule(
                    self.now,
                    Event::Closed {
                        conn,
                        to: proc,
                        remote: false,
                    },
                );
            }
        }
        Some(Ok(()))
    }

    /// The cut from `from` to `to` heals: what it held goes on, in order.
    pub(super) fn heal(&mut self, from: Endpoint, to: Endpoint) {
        self.cuts.remove(&(from, to));
        log::warn!(
            "sim-heal t_ms={} from={from:?} to={to:?}",
            self.now.as_millis()
        );
        let healed: Vec<(usize, usize)> = self
            .held
            .keys()
            .copied()
            .filter(|&(conn, side)| {
                let c = &self.conns[conn];
                let (f, t) = if side == 0 {
                    (c.dialer, c.acceptor)
                } else {
                    (c.acceptor, c.dialer)
                };
                (self.endpoint(f), self.endpoint(t)) == (from, to)
            })
            .collect();
        for (conn, side) in healed {
            self.schedule(self.now, Event::Release { conn, side });
        }
    }
}
