//! The server process: one listener, its connections, signals and the spawned backup,
//! around one [`Node`].

use super::conn::{Expect, Fill};
use super::conns::{Conns, Flushed};
use super::notify::Notifier;
use super::spawn::{spawn_backup, SpawnSpec};
use super::timeout_until;
use crate::link::ConnId;
use crate::node::{Node, NodeConfig, Output};
use crate::proto::codec::DecodeError;
use crate::proto::limits::{
    ACCEPT_RETRY_MS, FDS_RESERVED, HELLO_DEADLINE_MS, MAX_CLIENT_OUTBUF, MAX_OVER_LIMIT_HELLOS,
    MAX_PEER_OUTBUF,
};
use crate::proto::{
    ClientMsg, ConnectionStats, Hello, LinkKind, LoopStats, PeerMsg, Role, ServerMsg,
};
use log::{debug, error, info, warn};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Child;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const CLIENT_POLL: Token = Token(usize::MAX - 3);

/// How long, after reading them, an installed backup lets its client links' input wait
/// before it reads them again ([`Node::client_input_can_wait`]). Votes reach a backup one
/// client at a time: read as they came, they woke it ~30 times a ballot at window 1 with
/// 100 clients (`perf stat`), each wakeup paid inside the sending client's `send`, and it
/// made one `recv` per client and ballot. Read every 20 ms, a `recv` takes all of a
/// client's votes since the last one. 20 ms is far below failure detection (which ends the
/// wait: a backup that takes over proposes first) and keeps what waits in a socket small
/// (at 13,000 ballots/s, ~5 KB a client). Measured (100 clients, `pbvote bench`): 1 ms and
/// 10 ms were no faster than reading at once; 20 and 50 ms gave window 1 +15–20 %.
const CLIENT_READ_BATCH: Duration = Duration::from_millis(20);
/// Events handled (client links in `client_poll` too), or connections written, between two
/// looks at the heartbeat within one loop turn (`Server::timers_mid_turn`). 256 loopback
/// writes take 2–4 ms.
const WORK_BETWEEN_TIMER_LOOKS: usize = 256;

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    signals: Signals,
    conns: Conns,
    node: Node,
    spawn: SpawnSpec,
    child: Option<Child>,
    shutdown: bool,
    /// The client links while their input can wait, in an epoll set of their own that
    /// sits in `poll` only while `client_poll_armed`.
    client_poll: Poll,
    client_events: Events,
    clients_deferred: bool,
    client_poll_armed: bool,
    /// After a batch was read: when to look at the client links again.
    client_look_at: Option<Instant>,
    limit: ConnLimit,
    /// systemd's `$NOTIFY_SOCKET`, if it set one.
    notify: Option<Notifier>,
    liveness: Liveness,
}

/// How the loop keeps up, for `status` (`scripts/loop-liveness.sh` reads it under load).
#[derive(Default)]
struct Liveness {
    stats: LoopStats,
    /// The peer link the last heartbeat went out on, and when.
    last_heartbeat: Option<(ConnId, Instant)>,
}

impl Liveness {
    fn heartbeat(&mut self, link: ConnId, now: Instant) {
        self.stats.heartbeats_sent += 1;
        if let Some((last_link, at)) = self.last_heartbeat {
            if last_link == link {
                let gap = now.saturating_duration_since(at).as_millis() as u64;
                let stats = &mut self.stats;
                stats.heartbeat_gap_max_ms = stats.heartbeat_gap_max_ms.max(gap);
                stats.recent_heartbeat_gap_max_ms = stats.recent_heartbeat_gap_max_ms.max(gap);
            }
        }
        self.last_heartbeat = Some((link, now));
    }

    fn turn(&mut self, woke: Instant) {
        let took = woke.elapsed().as_millis() as u64;
        self.stats.turn_max_ms = self.stats.turn_max_ms.max(took);
        self.stats.recent_turn_max_ms = self.stats.recent_turn_max_ms.max(took);
    }

    /// What a `status` answer says; the recent maxima start over.
    fn report(&mut self) -> LoopStats {
        let stats = self.stats;
        self.stats.recent_heartbeat_gap_max_ms = 0;
        self.stats.recent_turn_max_ms = 0;
        stats
    }
}

/// `--max-connections`, and what is held to enforce it.
struct ConnLimit {
    max: usize,
    /// Accepted past `max`, their hello awaited: a peer, `status` or `remove-client` is
    /// let in, a client refused.
    over: BTreeSet<ConnId>,
    rejected: u64,
    /// Accepted connections in order, for the hello deadline.
    accepted: VecDeque<(Instant, ConnId)>,
    /// `accept` failed for want of descriptors: try again then.
    retry_accept_at: Option<Instant>,
    /// Rejections are logged at most once a second, with the count since.
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl ConnLimit {
    fn rejected(&mut self, peer: SocketAddr, why: &str, now: Instant) {
        self.rejected += 1;
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            warn!(
                "conn-rejected peer={peer} reason={why} max_connections={} rejected={} since_last_line={}",
                self.max, self.rejected, self.unlogged
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        }
    }
}

/// The default `--max-connections`: the soft descriptor limit less [`FDS_RESERVED`].
pub fn default_max_connections() -> usize {
    let soft = super::nofile_limit().map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(FDS_RESERVED).max(1)
}

/// What a readiness event said, from either poll.
#[derive(Clone, Copy)]
struct Readiness {
    readable: bool,
    writable: bool,
    /// A hang-up or error came with it.
    peer_closed: bool,
}

impl Readiness {
    fn of(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable(),
            writable: event.is_writable(),
            peer_closed: event.is_read_closed() || event.is_error(),
        }
    }
}

/// Binds `listen`, then runs the server until SIGTERM or SIGINT.
pub fn run(
    listen: SocketAddr,
    cfg: NodeConfig,
    spawn: SpawnSpec,
    max_connections: usize,
) -> io::Result<()> {
    let mut server = Server::bind(listen, cfg, spawn, max_connections)?;
    server.run()
}

impl Server {
    pub fn bind(
        listen: SocketAddr,
        mut cfg: NodeConfig,
        spawn: SpawnSpec,
        max_connections: usize,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        let bound = listener.local_addr()?;
        info!("listening addr={bound}");
        info!("connection-limit max_connections={max_connections} hello_deadline_ms={HELLO_DEADLINE_MS}");
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        cfg.listen = bound;
        let node = Node::new(cfg, Instant::now());
        Ok(Server {
            poll,
            listener,
            signals,
            conns: Conns::default(),
            node,
            spawn,
            child: None,
            shutdown: false,
            client_poll: Poll::new()?,
            client_events: Events::with_capacity(1024),
            clients_deferred: false,
            client_poll_armed: false,
            client_look_at: None,
            limit: ConnLimit {
                max: max_connections,
                over: BTreeSet::new(),
                rejected: 0,
                accepted: VecDeque::new(),
                retry_accept_at: None,
                last_logged: None,
                unlogged: 0,
            },
            notify: Notifier::from_env(Instant::now()),
            liveness: Liveness::default(),
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The node may have work at start (spawning its backup).
        self.drain_outputs(Instant::now());
        self.flush_dirty(Instant::now());
        while !self.shutdown {
            let hello_due = (self.limit.accepted.front())
                .map(|(at, _)| *at + Duration::from_millis(HELLO_DEADLINE_MS));
            let deadline = [
                self.node.poll_timeout(),
                self.client_look_at,
                hello_due,
                self.limit.retry_accept_at,
                self.notify.as_ref().and_then(|n| n.deadline()),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = timeout_until(deadline, Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let woke = Instant::now();
            let mut now = woke;
            if events.is_empty() {
                self.conns.drop_spare_buffers();
            }
            for (handled, event) in events.iter().enumerate() {
                if handled > 0 && handled % WORK_BETWEEN_TIMER_LOOKS == 0 {
                    now = self.timers_mid_turn();
                }
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signals(now),
                    CLIENT_POLL => self.read_waiting_clients(now),
                    token => self.on_conn_event(token, Readiness::of(event), now),
                }
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
            }
            if self.limit.retry_accept_at.is_some_and(|t| t <= now) {
                self.limit.retry_accept_at = None;
                self.accept(now);
            }
            self.close_silent(now);
            self.drain_outputs(now);
            let now = self.flush_dirty(now);
            // What can wait comes after what this turn owes its peer (a `CommitAck` the
            // primary waits for leaves before a batch of votes is read).
            if self.client_look_at.is_some_and(|t| t <= now) {
                self.read_waiting_clients(now);
                self.drain_outputs(now);
                self.flush_dirty(now);
            }
            self.place_client_links();
            self.tell_supervisor(now);
            self.liveness.turn(woke);
        }
        if let Some(notify) = &self.notify {
            notify.stopping();
        }
        info!("shutdown");
        Ok(())
    }

    /// systemd, if it asked: ready once serving, the role and view as they change, and the
    /// watchdog from this loop's own turns (a loop that hangs stops petting it).
    fn tell_supervisor(&mut self, now: Instant) {
        let Some(notify) = &mut self.notify else {
            return;
        };
        notify.on_time(now);
        let role = self.node.role();
        let serving = match role {
            Role::Primary => !self.node.is_recovering(),
            Role::Backup => true,
            Role::Joining => false,
        };
        notify.update(role, self.node.view(), serving);
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    let open = self.conns.open() - self.limit.over.len();
                    let over = open >= self.limit.max;
                    if over && self.limit.over.len() >= MAX_OVER_LIMIT_HELLOS {
                        // No room even to hear who it is: closed unanswered.
                        drop(stream);
                        self.limit.rejected(addr, "max-connections", now);
                        continue;
                    }
                    // A client link until its hello says otherwise (a peer gets more room).
                    let registry = self.poll.registry();
                    match self.conns.insert(
                        registry,
                        stream,
                        addr,
                        Expect::Hello,
                        MAX_CLIENT_OUTBUF,
                    ) {
                        Ok(id) => {
                            debug!("conn-accepted peer={addr} conn={id} over_limit={over}");
                            if over {
                                self.limit.over.insert(id);
                            }
                            self.limit.accepted.push_back((now, id));
                        }
                        Err(e) => warn!("conn-register-failed peer={addr} error={e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or the like: the connection
                    // waits in the backlog. The listener, edge-triggered, would not fire
                    // again for it: retry on a timer, and serve everyone else meanwhile.
                    warn!("accept-failed error={e} retry_in_ms={ACCEPT_RETRY_MS}");
                    self.limit.retry_accept_at = Some(now + Duration::from_millis(ACCEPT_RETRY_MS));
                    return;
                }
            }
        }
    }

    /// Closes every connection whose hello has not come within [`HELLO_DEADLINE_MS`].
    fn close_silent(&mut self, now: Instant) {
        let deadline = Duration::from_millis(HELLO_DEADLINE_MS);
        while let Some(&(at, id)) = self.limit.accepted.front() {
            if now.saturating_duration_since(at) < deadline {
                return;
            }
            self.limit.accepted.pop_front();
            if self.conns.expect_of(id) == Some(Expect::Hello) {
                let addr = self.conns.get_mut(id).map(|c| c.addr);
                warn!(
                    "conn-closing peer={} conn={id} reason=no hello within {HELLO_DEADLINE_MS} ms",
                    addr.map(|a| a.to_string()).unwrap_or_default()
                );
                self.close_now(id, now);
            }
        }
    }

    /// A connection accepted past `--max-connections` said who it is: a peer and the
    /// one-shot commands come in (the peer link and a joining backup are never refused for
    /// want of room), a client is told why not and closed. Returns whether to go on.
    fn admit_over_limit(&mut self, id: ConnId, hello: &Hello, now: Instant) -> bool {
        if !self.limit.over.remove(&id) {
            return true;
        }
        if hello.link_kind() != LinkKind::Client {
            return true;
        }
        let addr = self.conns.get_mut(id).map(|c| c.addr);
        if let Some(addr) = addr {
            self.limit.rejected(addr, "max-connections", now);
        }
        let refused = ServerMsg::Refused {
            view: self.node.view().number,
            reason: format!(
                "max-connections: this server holds its limit of {} connections \
                 (--max-connections); try again later",
                self.limit.max
            ),
            permanent: false,
        };
        self.queue(id, &refused, now);
        self.conns.close_after_flush(id);
        false
    }

    fn on_signals(&mut self, now: Instant) {
        let mut child_exited = false;
        for signal in self.signals.pending() {
            match signal {
                SIGCHLD => child_exited = true,
                SIGTERM | SIGINT => {
                    info!(
                        "signal name={}",
                        if signal == SIGTERM {
                            "SIGTERM"
                        } else {
                            "SIGINT"
                        }
                    );
                    self.shutdown = true;
                }
                _ => {}
            }
        }
        if child_exited {
            self.reap_child(now);
        }
    }

    fn reap_child(&mut self, now: Instant) {
        let Some(child) = &mut self.child else {
            return;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                warn!("backup-exited pid={} status={status}", child.id());
                self.child = None;
                self.node.handle_child_exit(now);
            }
            Ok(None) => {}
            Err(e) => warn!("backup-wait-failed error={e}"),
        }
    }

    /// Reads every client link with input waiting. If there was some, the next is left to
    /// wait [`CLIENT_READ_BATCH`]; if not, the next input wakes the loop.
    fn read_waiting_clients(&mut self, now: Instant) {
        let mut ready = Vec::new();
        loop {
            match self
                .client_poll
                .poll(&mut self.client_events, Some(Duration::ZERO))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("client-poll-failed error={e}");
                    break;
                }
            }
            let before = ready.len();
            ready.extend(
                self.client_events
                    .iter()
                    .map(|e| (e.token(), Readiness::of(e))),
            );
            // A full batch may have left more behind.
            if ready.len() - before < self.client_events.capacity() {
                break;
            }
        }
        let any = !ready.is_empty();
        let mut now = now;
        for (handled, (token, readiness)) in ready.into_iter().enumerate() {
            if handled > 0 && handled % WORK_BETWEEN_TIMER_LOOKS == 0 {
                now = self.timers_mid_turn();
            }
            self.on_conn_event(token, readiness, now);
        }
        if any && self.clients_deferred {
            self.arm_client_poll(false);
            self.client_look_at = Some(now + CLIENT_READ_BATCH);
        } else {
            self.arm_client_poll(true);
            self.client_look_at = None;
        }
    }

    /// Puts `client_poll` into the main poll (its next input wakes the loop) or takes it out.
    fn arm_client_poll(&mut self, arm: bool) {
        if arm == self.client_poll_armed {
            return;
        }
        let fd = self.client_poll.as_raw_fd();
        let mut source = SourceFd(&fd);
        let done = if arm {
            self.poll
                .registry()
                .register(&mut source, CLIENT_POLL, Interest::READABLE)
        } else {
            self.poll.registry().deregister(&mut source)
        };
        match done {
            Ok(()) => self.client_poll_armed = arm,
            Err(e) => {
                warn!("client-poll-failed error={e}");
                // Nothing would wake us for the client links: look at them on a timer.
                if arm {
                    self.client_look_at = Some(Instant::now() + CLIENT_READ_BATCH);
                }
            }
        }
    }

    /// Client links go to `client_poll` while the node says their input can wait. When it
    /// no longer can, they stay there and `client_poll` stays armed in the main poll, so
    /// that their input wakes the loop at once: moving 10,000 links back cost 20,000
    /// `epoll_ctl` at the start of every takeover. Links that say hello meanwhile stay in
    /// the main poll.
    fn place_client_links(&mut self) {
        let defer = self.node.client_input_can_wait();
        if defer == self.clients_deferred {
            return;
        }
        let mut failed = Vec::new();
        if defer {
            let (main, side) = (self.poll.registry(), self.client_poll.registry());
            for id in self.conns.ids_expecting(Expect::ClientMsgs) {
                if let Err(e) = self.conns.move_to_side_poll(id, main, side) {
                    failed.push((id, e));
                }
            }
        }
        self.clients_deferred = defer;
        info!(
            "client-reads mode={}",
            if defer { "batched" } else { "immediate" }
        );
        self.arm_client_poll(true);
        if !defer {
            self.client_look_at = None;
        }
        let now = Instant::now();
        for (id, e) in failed {
            warn!("conn-register-failed conn={id} error={e}");
            self.close_now(id, now);
        }
    }

    fn on_conn_event(&mut self, token: Token, event: Readiness, now: Instant) {
        let Some(id) = self.conns.id_of(token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.connecting {
            match conn.finish_connect() {
                Ok(true) => {
                    let addr = conn.addr;
                    debug!("conn-dialed peer={addr} conn={id}");
                    self.node.handle_connected(id, addr, now);
                }
                Ok(false) => return,
                Err(e) => {
                    let addr = conn.addr;
                    info!("dial-failed peer={addr} error={e}");
                    self.conns.remove(self.poll.registry(), id);
                    self.node.handle_dial_failed(addr, now);
                    return;
                }
            }
        }
        if event.writable {
            self.conns.mark_writable(id);
        }
        if event.readable || event.peer_closed {
            self.read_conn(id, event.peer_closed, now);
        }
    }

    /// Reads until `WouldBlock` or a short read, handing every complete frame to the node as
    /// it arrives.
    fn read_conn(&mut self, id: ConnId, peer_closed: bool, now: Instant) {
        loop {
            let Some(fill) = self.conns.fill(id, peer_closed) else {
                return;
            };
            if let Err(e) = self.dispatch_frames(id, now) {
                let addr = self.conns.get_mut(id).map(|c| c.addr);
                warn!(
                    "bad-frame peer={} conn={id} error={e}",
                    addr.map(|a| a.to_string()).unwrap_or_default()
                );
                self.close_now(id, now);
                return;
            }
            match fill {
                Ok(Fill::More) => continue,
                Ok(Fill::Drained) => return,
                Ok(Fill::Eof) => {
                    if let Some(conn) = self.conns.get_mut(id) {
                        if conn.unread() > 0 {
                            warn!(
                                "bad-frame peer={} conn={id} error=connection closed inside a frame ({} bytes unread)",
                                conn.addr,
                                conn.unread()
                            );
                        }
                    }
                    self.close_now(id, now);
                    return;
                }
                Err(e) => {
                    debug!("read-failed conn={id} error={e}");
                    self.close_now(id, now);
                    return;
                }
            }
        }
    }

    fn dispatch_frames(&mut self, id: ConnId, now: Instant) -> Result<(), DecodeError> {
        loop {
            let Some((conn, scratch)) = self.conns.with_scratch(id) else {
                return Ok(());
            };
            if conn.closing {
                return Ok(());
            }
            match conn.expect {
                Expect::Hello => {
                    let Some(hello) = conn.next_frame::<Hello>(scratch)? else {
                        return Ok(());
                    };
                    if !self.admit_over_limit(id, &hello, now) {
                        return Ok(());
                    }
                    let Some(conn) = self.conns.get_mut(id) else {
                        return Ok(());
                    };
                    conn.expect = match hello.link_kind() {
                        LinkKind::Client => Expect::ClientMsgs,
                        LinkKind::Peer => {
                            conn.set_outbuf_limit(MAX_PEER_OUTBUF);
                            Expect::PeerMsgs
                        }
                        LinkKind::Status | LinkKind::Admin => Expect::Nothing,
                    };
                    if conn.expect == Expect::ClientMsgs && self.clients_deferred {
                        let moved = self.conns.move_to_side_poll(
                            id,
                            self.poll.registry(),
                            self.client_poll.registry(),
                        );
                        if let Err(e) = moved {
                            warn!("conn-register-failed conn={id} error={e}");
                            self.close_now(id, now);
                            return Ok(());
                        }
                    }
                    self.node.handle_hello(id, hello, now);
                }
                Expect::ClientMsgs => {
                    let Some(msg) = conn.next_frame::<ClientMsg>(scratch)? else {
                        return Ok(());
                    };
                    self.node.handle_client_msg(id, msg, now);
                }
                Expect::PeerMsgs => {
                    let Some(msg) = conn.next_frame::<PeerMsg>(scratch)? else {
                        return Ok(());
                    };
                    self.node.handle_peer_msg(id, msg, now);
                }
                Expect::Nothing | Expect::ServerMsgs => {
                    if conn.unread() == 0 {
                        return Ok(());
                    }
                    return Err(DecodeError::Malformed {
                        expected: "nothing",
                        detail: format!(
                            "{} unexpected bytes on a link that expects none ({:?})",
                            conn.unread(),
                            conn.expect
                        ),
                    });
                }
            }
        }
    }

    fn drain_outputs(&mut self, now: Instant) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Dial(addr) => self.dial(addr, now),
                Output::Hello(id, msg) => self.queue(id, &msg, now),
                Output::ToClient(id, msg) => self.queue(id, &msg, now),
                Output::WhenDrained(id) => self.conns.notify_when_drained(id),
                Output::ToClients(ids, msg) => self.queue_to_all(&ids, &msg, now),
                Output::ToPeer(id, msg) => {
                    if matches!(msg, PeerMsg::Heartbeat { .. }) {
                        self.liveness.heartbeat(id, Instant::now());
                    }
                    self.queue(id, &msg, now)
                }
                Output::Status(id, mut reply) => {
                    reply.connections = Some(ConnectionStats {
                        open: self.conns.open() as u64,
                        max: self.limit.max as u64,
                        rejected: self.limit.rejected,
                    });
                    reply.event_loop = Some(self.liveness.report());
                    self.queue(id, &*reply, now)
                }
                Output::Removed(id, reply) => self.queue(id, &reply, now),
                Output::Close(id, reason) => {
                    if let Some(addr) = self.conns.close_after_flush(id) {
                        info!("conn-closing peer={addr} conn={id} reason={reason}");
                    }
                }
                // SIGTERM to the whole group reaches the backup too: its exit must not
                // make a stopping primary start another one, left behind. The backup may
                // have closed its link before this loop read its own signal (the closed
                // link came first in the batch, or the handler ran only as epoll_wait
                // returned), so look at the signals now, not after the spawn.
                Output::SpawnBackup => {
                    self.on_signals(now);
                    if self.shutdown {
                        info!("spawn-skipped reason=shutting-down");
                    } else {
                        self.spawn_backup();
                    }
                }
                Output::Exit(reason) => {
                    info!("exiting reason={reason}");
                    self.shutdown = true;
                }
            }
        }
    }

    fn queue<T: crate::proto::codec::Wire>(&mut self, id: ConnId, msg: &T, now: Instant) {
        if let Err(e) = self.conns.queue(id, msg) {
            warn!("send-failed conn={id} error={e}");
            self.close_now(id, now);
        }
    }

    fn queue_to_all(&mut self, ids: &[ConnId], msg: &ServerMsg, now: Instant) {
        for (id, e) in self.conns.queue_to_all(ids, msg, |_| false) {
            warn!("send-failed conn={id} error={e}");
            self.close_now(id, now);
        }
    }

    fn dial(&mut self, addr: SocketAddr, now: Instant) {
        let registry = self.poll.registry();
        if let Err(e) = self
            .conns
            .dial(registry, addr, Expect::PeerMsgs, MAX_PEER_OUTBUF)
        {
            info!("dial-failed peer={addr} error={e}");
            self.node.handle_dial_failed(addr, now);
        }
    }

    fn spawn_backup(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The node declared it dead; a hung or partitioned process would still hold
            // the port the new one needs. SIGKILL works on a stopped process too.
            if let Ok(None) = child.try_wait() {
                warn!("backup-killed pid={} reason=declared-dead", child.id());
                let _ = child.kill();
            }
            match child.wait() {
                Ok(status) => warn!("backup-exited pid={} status={status}", child.id()),
                Err(e) => warn!("backup-wait-failed pid={} error={e}", child.id()),
            }
        }
        match spawn_backup(&self.spawn, self.node.listen()) {
            Ok(child) => {
                info!(
                    "spawned-backup pid={} listen={}",
                    child.id(),
                    self.spawn.listen
                );
                self.child = Some(child);
            }
            Err(e) => error!("spawn-failed listen={} error={e}", self.spawn.listen),
        }
    }

    /// Writes what the turn queued. A connection the node waits on to drain (a catch-up
    /// burst) and that drained gets its next burst, written in the same turn. Between
    /// batches of writes it looks at the heartbeat (`timers_mid_turn`); returns the clock
    /// as it last read it.
    fn flush_dirty(&mut self, mut now: Instant) -> Instant {
        let mut drained = Vec::new();
        loop {
            let ended = (self.conns).flush_dirty_upto(&mut drained, WORK_BETWEEN_TIMER_LOOKS);
            for (id, ended) in ended {
                if let Flushed::Failed(e) = ended {
                    debug!("write-failed conn={id} error={e}");
                }
                self.close_now(id, now);
            }
            for id in drained.drain(..) {
                self.node.handle_drained(id);
            }
            self.drain_outputs(now);
            if !self.conns.has_dirty() {
                return now;
            }
            now = self.timers_mid_turn();
        }
    }

    /// A heartbeat that fell due while this turn worked is sent now, not at the turn's
    /// end: one turn that reads a ballot's votes or writes its results to thousands of
    /// clients takes tens of milliseconds, and a heartbeat must not wait for it
    /// (`scripts/loop-liveness.sh`). What it queues goes out in the same turn, peer links
    /// first. Only the heartbeat (and a lease renewal that cannot wait): a timer that acts
    /// on silence (the peer's death) waits for the turn's end, when the rest of the batch,
    /// which may hold the very frame it waits for, has been read
    /// (`Node::handle_heartbeat_due`).
    fn timers_mid_turn(&mut self) -> Instant {
        let now = Instant::now();
        if self.node.handle_heartbeat_due(now) {
            self.drain_outputs(now);
        }
        now
    }

    /// Where a connection is registered: a client link moves to `client_poll` once client
    /// input can wait (`place_client_links` moves them all; a new one moves at its Hello),
    /// and stays there.
    fn in_client_poll(&self, id: ConnId) -> bool {
        self.conns.in_side_poll(id)
    }

    /// Closes at once and tells the node.
    fn close_now(&mut self, id: ConnId, now: Instant) {
        let registry = if self.in_client_poll(id) {
            self.client_poll.registry()
        } else {
            self.poll.registry()
        };
        self.limit.over.remove(&id);
        if let Some(conn) = self.conns.remove(registry, id) {
            debug!("conn-closed peer={} conn={id}", conn.addr);
            self.node.handle_closed(id, now);
        }
    }
}
