//! The server process: one listener, its connections, signals and the spawned backup,
//! around one [`Node`].

use super::conn::{Conn, Expect, Fill, READ_CHUNK};
use super::spawn::{spawn_backup, SpawnSpec};
use super::timeout_until;
use crate::link::ConnId;
use crate::node::{Node, NodeConfig, Output};
use crate::proto::codec::DecodeError;
use crate::proto::limits::{MAX_CLIENT_OUTBUF, MAX_PEER_OUTBUF};
use crate::proto::{ClientMsg, Hello, LinkKind, PeerMsg};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::process::Child;
use std::time::Instant;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    signals: Signals,
    conns: Slab<Conn>,
    next_gen: u32,
    node: Node,
    spawn: SpawnSpec,
    child: Option<Child>,
    /// Connections with output queued this turn: each is written once per loop turn.
    dirty: Vec<ConnId>,
    shutdown: bool,
    /// Every `read` lands here first; connections keep only what arrived.
    scratch: Vec<u8>,
}

/// Binds `listen`, then runs the server until SIGTERM or SIGINT.
pub fn run(listen: SocketAddr, cfg: NodeConfig, spawn: SpawnSpec) -> io::Result<()> {
    let mut server = Server::bind(listen, cfg, spawn)?;
    server.run()
}

impl Server {
    pub fn bind(listen: SocketAddr, mut cfg: NodeConfig, spawn: SpawnSpec) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        let bound = listener.local_addr()?;
        info!("listening addr={bound}");
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
            conns: Slab::new(),
            next_gen: 0,
            node,
            spawn,
            child: None,
            dirty: Vec::new(),
            shutdown: false,
            scratch: vec![0; READ_CHUNK],
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The node may have work at start (spawning its backup).
        self.drain_outputs(Instant::now());
        self.flush_dirty(Instant::now());
        while !self.shutdown {
            let timeout = timeout_until(self.node.poll_timeout(), Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signals(now),
                    Token(slot) => self.on_conn_event(slot, event, now),
                }
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
            }
            self.drain_outputs(now);
            self.flush_dirty(now);
        }
        info!("shutdown");
        Ok(())
    }

    fn conn_id(&self, slot: usize) -> Option<ConnId> {
        self.conns.get(slot).map(|c| ConnId {
            slot: slot as u32,
            gen: c.gen,
        })
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot as usize)
            .filter(|c| c.gen == id.gen)
    }

    fn insert(
        &mut self,
        mut stream: TcpStream,
        addr: SocketAddr,
        expect: Expect,
    ) -> io::Result<ConnId> {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let limit = match expect {
            Expect::PeerMsgs => MAX_PEER_OUTBUF,
            _ => MAX_CLIENT_OUTBUF,
        };
        entry.insert(Conn::new(stream, addr, gen, expect, limit));
        Ok(ConnId {
            slot: slot as u32,
            gen,
        })
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    match self.insert(stream, addr, Expect::Hello) {
                        Ok(id) => debug!("conn-accepted peer={addr} conn={id}"),
                        Err(e) => warn!("conn-register-failed peer={addr} error={e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next readiness event.
                    warn!("accept-failed error={e}");
                    let _ = now;
                    return;
                }
            }
        }
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

    fn on_conn_event(&mut self, slot: usize, event: &mio::event::Event, now: Instant) {
        let Some(id) = self.conn_id(slot) else {
            return;
        };
        let conn = &mut self.conns[slot];
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
                    self.remove(id);
                    self.node.handle_dial_failed(addr, now);
                    return;
                }
            }
        }
        if event.is_writable() {
            self.dirty.push(id);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_conn(id, now);
        }
    }

    /// Reads until `WouldBlock`, handing every complete frame to the node as it arrives.
    fn read_conn(&mut self, id: ConnId, now: Instant) {
        loop {
            let Some(conn) = self
                .conns
                .get_mut(id.slot as usize)
                .filter(|c| c.gen == id.gen)
            else {
                return;
            };
            let fill = conn.fill(&mut self.scratch);
            if let Err(e) = self.dispatch_frames(id, now) {
                let addr = self.conn_mut(id).map(|c| c.addr);
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
                    if let Some(conn) = self.conn_mut(id) {
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
            let Some(conn) = self.conn_mut(id) else {
                return Ok(());
            };
            if conn.closing {
                return Ok(());
            }
            match conn.expect {
                Expect::Hello => {
                    let Some(hello) = conn.next_frame::<Hello>()? else {
                        return Ok(());
                    };
                    conn.expect = match hello.link_kind() {
                        LinkKind::Client => Expect::ClientMsgs,
                        LinkKind::Peer => {
                            conn.set_outbuf_limit(MAX_PEER_OUTBUF);
                            Expect::PeerMsgs
                        }
                        LinkKind::Status => Expect::Nothing,
                    };
                    self.node.handle_hello(id, hello, now);
                }
                Expect::ClientMsgs => {
                    let Some(msg) = conn.next_frame::<ClientMsg>()? else {
                        return Ok(());
                    };
                    self.node.handle_client_msg(id, msg, now);
                }
                Expect::PeerMsgs => {
                    let Some(msg) = conn.next_frame::<PeerMsg>()? else {
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
                        detail: format!("{} unexpected bytes on a status link", conn.unread()),
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
                Output::ToPeer(id, msg) => self.queue(id, &msg, now),
                Output::Status(id, reply) => self.queue(id, &*reply, now),
                Output::Close(id, reason) => {
                    if let Some(conn) = self.conn_mut(id) {
                        info!("conn-closing peer={} conn={id} reason={reason}", conn.addr);
                        conn.closing = true;
                        self.dirty.push(id);
                    }
                }
                Output::SpawnBackup => self.spawn_backup(),
                Output::Exit(reason) => {
                    info!("exiting reason={reason}");
                    self.shutdown = true;
                }
            }
        }
    }

    fn queue<T: crate::proto::codec::Wire>(&mut self, id: ConnId, msg: &T, now: Instant) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if let Err(e) = conn.queue(msg) {
            warn!("send-failed peer={} conn={id} error={e}", conn.addr);
            self.close_now(id, now);
            return;
        }
        self.dirty.push(id);
    }

    fn dial(&mut self, addr: SocketAddr, now: Instant) {
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                info!("dial-failed peer={addr} error={e}");
                self.node.handle_dial_failed(addr, now);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        match self.insert(stream, addr, Expect::PeerMsgs) {
            Ok(id) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.connecting = true;
                }
            }
            Err(e) => {
                info!("dial-failed peer={addr} error={e}");
                self.node.handle_dial_failed(addr, now);
            }
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

    fn flush_dirty(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if conn.connecting {
                continue;
            }
            if let Err(e) = conn.flush() {
                debug!("write-failed peer={} conn={id} error={e}", conn.addr);
                self.close_now(id, now);
                continue;
            }
            if conn.closing && !conn.has_output() {
                self.close_now(id, now);
            }
        }
        self.dirty = dirty;
    }

    fn remove(&mut self, id: ConnId) -> Option<Conn> {
        self.conn_mut(id)?;
        let mut conn = self.conns.remove(id.slot as usize);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        Some(conn)
    }

    /// Closes at once and tells the node.
    fn close_now(&mut self, id: ConnId, now: Instant) {
        if let Some(conn) = self.remove(id) {
            debug!("conn-closed peer={} conn={id}", conn.addr);
            self.node.handle_closed(id, now);
        }
    }
}
