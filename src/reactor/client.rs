//! The client process: one or more client cores (the bench hosts thousands) on one loop,
//! each with its own connections and its own log file.

use super::conn::{Expect, Fill};
use super::conns::{Conns, Flushed};
use super::promise::{self, PromiseFile};
use super::timeout_until;
use super::timer::TimerWheel;
use crate::ballot_log::{self, LogEnd};
use crate::client::{Client, ClientOutput};
use crate::link::ConnId;
use crate::proto::limits::{MAX_CLIENT_OUTBUF, MAX_OPEN_BALLOTS};
use crate::proto::{ClientMsg, Seq, ServerMsg};
use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const SIGNALS: Token = Token(usize::MAX - 2);

/// Opens a client log for appending and returns the last seq it holds. A torn last line
/// (a write cut short by a crash) is cut off; anything else that is not exactly 1..k is
/// refused, because appending to it would hide the damage.
pub fn open_log(path: &Path) -> Result<(File, LogEnd), String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => {
            String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let (lines, torn) = ballot_log::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, line) in lines.iter().enumerate() {
        if line.seq != Seq(i as u64 + 1) {
            return Err(format!(
                "{}: line {} holds seq {}, expected {}: refusing to append to a damaged log",
                path.display(),
                i + 1,
                line.seq,
                i + 1
            ));
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if torn {
        let keep = text.rfind('\n').map_or(0, |i| i + 1);
        warn!("log-torn-tail path={} kept_bytes={keep}", path.display());
        file.set_len(keep as u64)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((file, LogEnd::of(&lines)))
}

pub struct Hosted {
    pub core: Client,
    pub log: File,
    promise: PromiseFile,
    /// Lines appended by the core this turn, written before any socket is flushed.
    pending: Vec<u8>,
}

impl Hosted {
    pub fn new(core: Client, log: File, promise: PromiseFile) -> Hosted {
        Hosted {
            core,
            log,
            promise,
            pending: Vec::new(),
        }
    }
}

/// What the bench watches on a host: when each ballot was first asked for, and when the
/// last hosted client logged it.
#[derive(Debug, Default)]
pub struct Probe {
    /// Ballots `base`, `base + 1`, ... that not every hosted client has logged yet. Each
    /// client logs in seq order, so they complete from the front: a ring, not a map (the
    /// probe is asked twice per client and ballot, and hashing showed in the profile).
    pending: VecDeque<Pending>,
    base: u64,
    /// Every ballot all hosted clients logged, in the order they completed.
    pub done: Vec<BallotSeen>,
    /// Watch for a result tagged with a view above this one (a failover)...
    pub views_above: Option<u64>,
    /// ...and note when the first one arrived.
    pub first_result_above: Option<Instant>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    asked: Option<Instant>,
    logged: u32,
    votes: u64,
}

/// Ballots further ahead of the oldest pending one than this are not tracked (no server
/// opens that many at once).
const PROBE_AHEAD: u64 = 1 << 16;

/// One ballot as one host saw it.
#[derive(Clone, Copy, Debug)]
pub struct BallotSeen {
    pub seq: u64,
    /// The first `VoteRequest` for it that any hosted client got (none: asked before the
    /// probe was set).
    pub asked: Option<Instant>,
    /// The last hosted client's log line.
    pub done: Instant,
    /// Votes counted in its result.
    pub votes: u64,
}

impl Probe {
    /// Ballot `seq`'s entry. The first `VoteRequest` the probe sees sets where it starts:
    /// a ballot asked for before the probe was set may have been logged by some clients
    /// before it too, and would never complete here.
    fn pending(&mut self, seq: u64) -> Option<&mut Pending> {
        if self.base == 0 {
            return None;
        }
        let ahead = seq.checked_sub(self.base).filter(|&a| a < PROBE_AHEAD)? as usize;
        if self.pending.len() <= ahead {
            self.pending.resize(ahead + 1, Pending::default());
        }
        self.pending.get_mut(ahead)
    }

    fn saw(&mut self, msg: &ServerMsg, now: Instant) {
        match msg {
            ServerMsg::VoteRequest { first, count, .. } => {
                let count = u64::from(*count).min(MAX_OPEN_BALLOTS);
                if self.base == 0 {
                    self.base = first.0.max(1);
                }
                for seq in first.0..first.0.saturating_add(count) {
                    if let Some(p) = self.pending(seq) {
                        p.asked.get_or_insert(now);
                    }
                }
            }
            ServerMsg::Results { view, .. } => {
                if self.views_above.is_some_and(|v| view.0 > v) {
                    self.first_result_above.get_or_insert(now);
                }
            }
            ServerMsg::Welcome { .. }
            | ServerMsg::NewView { .. }
            | ServerMsg::Propose { .. }
            | ServerMsg::Lease { .. }
            | ServerMsg::Refused { .. }
            | ServerMsg::Left { .. } => {}
        }
    }

    fn logged(&mut self, seq: u64, votes: u64, clients: u32, now: Instant) {
        let Some(p) = self.pending(seq) else {
            return;
        };
        p.logged += 1;
        p.votes = votes;
        while let Some(front) = self.pending.front().filter(|f| f.logged >= clients) {
            self.done.push(BallotSeen {
                seq: self.base,
                asked: front.asked,
                done: now,
                votes: front.votes,
            });
            self.pending.pop_front();
            self.base += 1;
        }
    }
}

pub struct ClientHost {
    /// Set by the bench: counts ballots, votes and latencies.
    pub probe: Option<Probe>,
    poll: Poll,
    signals: Signals,
    conns: Conns,
    pub clients: Vec<Hosted>,
    wheel: TimerWheel,
    touched: Vec<usize>,
    logs_pending: Vec<usize>,
    /// The connections a repeated message goes to (kept to reuse its allocation).
    send_to: Vec<ConnId>,
    /// Some client promised this turn.
    promises_due: bool,
    /// When the votes held back for backups are written (set while some are held).
    held_until: Option<Instant>,
    shutdown: bool,
    /// Signals seen: the first asks the clients to leave, a second stops at once.
    signals_seen: u32,
    /// `pbvote client`: a client that is done (`--until`) or told to stop leaves the
    /// membership first, for at most this long. `None` (the bench): it just stops.
    leave_wait: Option<Duration>,
    /// Until when the clients wait for their leave to be agreed.
    leave_until: Option<Instant>,
}

/// How a host's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every client is done (`--until`) and, where it leaves, left.
    Done,
    /// A signal, and every client that leaves has left.
    Stopped,
    /// Leaving was not agreed within the wait (or a second signal came first).
    LeaveUnconfirmed,
    /// The deadline passed.
    Deadline,
    /// A server refused a client for good (`Refused { permanent }`): its reason.
    Refused(String),
}

impl ClientHost {
    pub fn new(clients: Vec<Hosted>) -> io::Result<ClientHost> {
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let now = Instant::now();
        let mut host = ClientHost {
            poll,
            signals,
            conns: Conns::default(),
            wheel: TimerWheel::new(now),
            touched: (0..clients.len()).collect(),
            clients,
            logs_pending: Vec::new(),
            send_to: Vec::new(),
            promises_due: false,
            held_until: None,
            shutdown: false,
            signals_seen: 0,
            leave_wait: None,
            leave_until: None,
            probe: None,
        };
        for i in 0..host.clients.len() {
            host.clients[i].core.handle_timeout(now);
        }
        Ok(host)
    }

    /// A signal asked the host to stop.
    pub fn stopped(&self) -> bool {
        self.shutdown
    }

    /// Every hosted client follows a view that has a backup.
    pub fn all_paired(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.core.view().is_some_and(|v| v.backup.is_some()))
    }

    /// Every client here logged a result: ballots run.
    pub fn all_logged(&self) -> bool {
        self.clients.iter().all(|c| c.core.last_logged() > Seq(0))
    }

    pub fn all_done(&self) -> bool {
        self.clients.iter().all(|c| c.core.is_done())
    }

    /// From now on a client that is done, or told to stop, first leaves the membership,
    /// waiting at most `wait` for the leave to be agreed.
    pub fn leave_when_done(&mut self, wait: Duration) {
        self.leave_wait = Some(wait);
    }

    /// Whether the run is over, and how. Starts the leave when it is due.
    fn ended(&mut self, now: Instant, deadline: Option<Instant>) -> Option<Ended> {
        if deadline.is_some_and(|d| d <= now) {
            return Some(Ended::Deadline);
        }
        if let Some(why) = self.clients.iter().find_map(|c| c.core.refused()) {
            return Some(Ended::Refused(why.to_string()));
        }
        let wants_out = self.shutdown || self.all_done();
        let Some(wait) = self.leave_wait else {
            return wants_out.then_some(if self.shutdown {
                Ended::Stopped
            } else {
                Ended::Done
            });
        };
        if !wants_out {
            return None;
        }
        if self.leave_until.is_none() {
            self.leave_until = Some(now + wait);
            for i in 0..self.clients.len() {
                self.clients[i].core.leave(now);
                self.touched.push(i);
            }
            return None;
        }
        if self.clients.iter().all(|c| c.core.has_left()) {
            return Some(if self.shutdown {
                Ended::Stopped
            } else {
                Ended::Done
            });
        }
        let overdue = self.leave_until.is_some_and(|t| t <= now) || self.signals_seen > 1;
        overdue.then_some(Ended::LeaveUnconfirmed)
    }

    /// Runs until every client is done (`--until`), a signal, or `deadline`; a host that
    /// leaves (`leave_when_done`) runs on until the leaves are agreed or its wait is over.
    pub fn run(&mut self, deadline: Option<Instant>) -> io::Result<Ended> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            let now = Instant::now();
            self.after_turn(now)?;
            if let Some(ended) = self.ended(now, deadline) {
                // Votes held back for a backup go out before the host does.
                if self.conns.has_held() {
                    self.conns.release_held();
                    self.after_turn(now)?;
                }
                return Ok(ended);
            }
            if !self.touched.is_empty() {
                continue; // the leave just started: send it before sleeping
            }
            let wake = [
                self.wheel.next_deadline(),
                deadline,
                self.held_until,
                self.leave_until,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Err(e) = self.poll.poll(&mut events, timeout_until(wake, now)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            if events.is_empty() {
                self.conns.drop_spare_buffers();
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        for signal in self.signals.pending() {
                            info!("signal number={signal}");
                            self.shutdown = true;
                            self.signals_seen += 1;
                            self.conns.release_held();
                        }
                    }
                    token => self.on_conn_event(token, event, now),
                }
            }
            if self.held_until.is_some_and(|t| t <= now) {
                self.conns.release_held();
                self.held_until = None;
            }
            expired.clear();
            self.wheel.expire(now, &mut expired);
            for &i in &expired {
                self.clients[i].core.handle_timeout(now);
                self.touched.push(i);
            }
        }
    }

    /// Performs what the touched cores asked for: log lines first, then sockets.
    fn after_turn(&mut self, now: Instant) -> io::Result<()> {
        while let Some(i) = self.touched.pop() {
            self.drain_outputs(i, now);
            let deadline = self.clients[i].core.poll_timeout();
            self.wheel.set(i, deadline);
        }
        if self.promises_due {
            promise::write_due(self.clients.iter_mut().map(|h| &mut h.promise)).map_err(
                |(path, e)| io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            )?;
            self.promises_due = false;
        }
        for i in self.logs_pending.drain(..) {
            let hosted = &mut self.clients[i];
            if hosted.pending.is_empty() {
                continue;
            }
            // A log we cannot write is fatal: acknowledging past it would lose a line.
            hosted.log.write_all(&hosted.pending).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing the log of {}: {e}", hosted.core.id()),
                )
            })?;
            hosted.pending.clear();
        }
        // Client cores never ask to hear of a drained connection.
        for (id, ended) in self.conns.flush_dirty(&mut Vec::new()) {
            if let Flushed::Failed(e) = ended {
                debug!("write-failed conn={id} error={e}");
            }
            self.close_now(id, now);
        }
        if !self.touched.is_empty() {
            // Closing a connection touched its core; let it act before we sleep.
            return self.after_turn(now);
        }
        if self.conns.has_held() {
            self.held_until.get_or_insert(now + BACKUP_VOTES_WAIT);
        }
        Ok(())
    }

    fn drain_outputs(&mut self, i: usize, now: Instant) {
        // The same message to several servers in a row (the votes go to both) is encoded
        // once: kept, with its connections, until a different output comes.
        let mut ids = std::mem::take(&mut self.send_to);
        let mut same: Option<ClientMsg> = None;
        while let Some(output) = self.clients[i].core.poll_output() {
            if let ClientOutput::Send(id, msg) = output {
                if same.as_ref() != Some(&msg) {
                    self.send_to_all(i, &mut ids, same.replace(msg), now);
                }
                ids.push(id);
                continue;
            }
            self.send_to_all(i, &mut ids, same.take(), now);
            match output {
                ClientOutput::Dial(addr) => self.dial(i, addr, now),
                ClientOutput::Hello(id, hello) => self.queue(id, &hello, now),
                ClientOutput::Send(..) => {}
                ClientOutput::Close(id) => {
                    self.conns.close_after_flush(id);
                }
                ClientOutput::Promise(promised) => {
                    // Made durable at the end of the turn, before any socket is written:
                    // before the Accept it guards leaves.
                    self.clients[i].promise.stage(promised);
                    self.promises_due = true;
                }
                ClientOutput::Append(line) => {
                    if let Some(probe) = &mut self.probe {
                        let votes = u64::from(line.tally.yes + line.tally.no);
                        probe.logged(line.seq.0, votes, self.clients.len() as u32, now);
                    }
                    let hosted = &mut self.clients[i];
                    if hosted.pending.is_empty() {
                        self.logs_pending.push(i);
                    }
                    line.write_to(&mut hosted.pending);
                }
            }
        }
        self.send_to_all(i, &mut ids, same, now);
        self.send_to = ids;
    }

    /// Queues `msg` (if any) from client `i` on each of `ids`, encoded once, and empties
    /// `ids`. Votes to a backup may wait for the next `BACKUP_VOTES_WAIT`.
    fn send_to_all(
        &mut self,
        i: usize,
        ids: &mut Vec<ConnId>,
        msg: Option<ClientMsg>,
        now: Instant,
    ) {
        if let Some(msg) = msg {
            let core = &self.clients[i].core;
            let may_wait = |id| matches!(msg, ClientMsg::Votes { .. }) && core.is_backup_link(id);
            if let [id] = ids[..] {
                if !may_wait(id) {
                    self.queue(id, &msg, now);
                    ids.clear();
                    return;
                }
            }
            let failed = self.conns.queue_to_all(ids, &msg, may_wait);
            for (id, e) in failed {
                warn!("send-failed conn={id} error={e}");
                self.close_now(id, now);
            }
        }
        ids.clear();
    }

    fn queue<T: crate::proto::codec::Wire>(&mut self, id: ConnId, msg: &T, now: Instant) {
        if let Err(e) = self.conns.queue(id, msg) {
            warn!("send-failed conn={id} error={e}");
            self.close_now(id, now);
        }
    }

    fn dial(&mut self, owner: usize, addr: SocketAddr, now: Instant) {
        let registry = self.poll.registry();
        match self
            .conns
            .dial(registry, addr, Expect::ServerMsgs, MAX_CLIENT_OUTBUF)
        {
            Ok(id) => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.owner = owner;
                }
            }
            Err(e) => {
                debug!("dial-failed peer={addr} error={e}");
                self.clients[owner].core.handle_dial_failed(addr, now);
                self.touched.push(owner);
            }
        }
    }

    fn on_conn_event(&mut self, token: Token, event: &mio::event::Event, now: Instant) {
        let Some(id) = self.conns.id_of(token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let owner = conn.owner;
        if conn.connecting {
            match conn.finish_connect() {
                Ok(true) => {
                    let addr = conn.addr;
                    self.clients[owner].core.handle_connected(id, addr, now);
                    self.touched.push(owner);
                }
                Ok(false) => return,
                Err(e) => {
                    let addr = conn.addr;
                    debug!("dial-failed peer={addr} error={e}");
                    self.conns.remove(self.poll.registry(), id);
                    self.clients[owner].core.handle_dial_failed(addr, now);
                    self.touched.push(owner);
                    return;
                }
            }
        }
        if event.is_writable() {
            self.conns.mark_writable(id);
        }
        let peer_closed = event.is_read_closed() || event.is_error();
        if event.is_readable() || peer_closed {
            self.read_conn(id, owner, peer_closed, now);
        }
    }

    fn read_conn(&mut self, id: ConnId, owner: usize, peer_closed: bool, now: Instant) {
        loop {
            let Some(fill) = self.conns.fill(id, peer_closed) else {
                return;
            };
            loop {
                let Some((conn, scratch)) = self.conns.with_scratch(id) else {
                    return;
                };
                match conn.next_frame::<ServerMsg>(scratch) {
                    Ok(Some(msg)) => {
                        if let Some(probe) = &mut self.probe {
                            probe.saw(&msg, now);
                        }
                        self.clients[owner].core.handle_msg(id, msg, now);
                        self.touched.push(owner);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!("bad-frame peer={} conn={id} error={e}", conn.addr);
                        self.close_now(id, now);
                        return;
                    }
                }
            }
            match fill {
                Ok(Fill::More) => continue,
                Ok(Fill::Drained) => return,
                Ok(Fill::Eof) | Err(_) => {
                    self.close_now(id, now);
                    return;
                }
            }
        }
    }

    fn close_now(&mut self, id: ConnId, now: Instant) {
        if let Some(conn) = self.conns.remove(self.poll.registry(), id) {
            self.clients[conn.owner].core.handle_closed(id, now);
            self.touched.push(conn.owner);
        }
    }
}

/// Longest a client's votes to the backup of its view are held back, so that several
/// ballots' votes leave in one write (or sooner, once `HELD_OUTPUT_LIMIT` waits). With
/// 10,000 clients a ballot takes 250–400 ms on the development machine: a wait of 10 ms
/// sent every vote on its own, 300 ms one `send` in one or two ballots, 1 s one in two to
/// four (`pbvote bench --clients 10000 --window 1`; PERFORMANCE.md, sessions 9 and 10).
/// Nothing waits for this copy (PROTOCOL.md §4).
const BACKUP_VOTES_WAIT: Duration = Duration::from_millis(1000);

/// How long `pbvote client` waits between redials of a server that is down.
pub const REDIAL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::View;

    fn request(first: u64, count: u32) -> ServerMsg {
        ServerMsg::VoteRequest {
            view: View(1),
            first: Seq(first),
            count,
        }
    }

    /// The bench sets the probe mid-stream: a ballot some clients logged before that can
    /// never complete in it, and must not hold back the ballots after it.
    #[test]
    fn a_probe_set_mid_ballot_counts_from_the_next_request() {
        let t0 = Instant::now();
        let mut probe = Probe::default();
        // Ballot 7: two of four clients logged it before the probe; these are the others.
        probe.logged(7, 4, 4, t0);
        probe.logged(7, 4, 4, t0);
        probe.saw(&request(8, 2), t0);
        for seq in [8, 9] {
            for _ in 0..4 {
                probe.logged(seq, 4, 4, t0);
            }
        }
        let seen: Vec<u64> = probe.done.iter().map(|b| b.seq).collect();
        assert_eq!(seen, vec![8, 9]);
        assert!(probe
            .done
            .iter()
            .all(|b| b.asked == Some(t0) && b.votes == 4));
        assert!(probe.pending.is_empty());
    }
}
