//! The client process: one or more client cores (the bench hosts thousands) on one loop,
//! each with its own connections and its own log file.

use super::conn::{Expect, Fill};
use super::conns::{Conns, Flushed};
use super::timeout_until;
use super::timer::TimerWheel;
use crate::ballot_log;
use crate::client::{Client, ClientOutput, Promised};
use crate::link::ConnId;
use crate::proto::limits::{MAX_CLIENT_OUTBUF, MAX_OPEN_BALLOTS, MAX_RECOVERY_TAIL};
use crate::proto::{ClientMsg, Seq, ServerMsg, Tally, View, ViewInfo};
use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SIGNALS: Token = Token(usize::MAX - 2);

/// Opens a client log for appending and returns the last seq it holds. A torn last line
/// (a write cut short by a crash) is cut off; anything else that is not exactly 1..k is
/// refused, because appending to it would hide the damage.
pub fn open_log(path: &Path) -> Result<(File, Seq, Vec<Tally>), String> {
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
    let recent = lines[lines.len().saturating_sub(MAX_RECOVERY_TAIL)..]
        .iter()
        .map(|l| l.tally)
        .collect();
    Ok((file, Seq(lines.len() as u64), recent))
}

/// Where a client keeps the highest view number it promised: beside its log, as
/// `<log>.view`, one decimal number.
pub fn promise_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".view");
    PathBuf::from(name)
}

/// The promise a client made before it stopped (0 if none), and the servers of the view
/// it was made to. The file is one line: the number, then those servers' addresses.
pub fn read_promise(log: &Path) -> Result<Promised, String> {
    let path = promise_path(log);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Promised::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut words = text.split_whitespace();
    let view = words
        .next()
        .and_then(|w| w.parse().ok())
        .map(View)
        .ok_or_else(|| format!("{}: not a view number", path.display()))?;
    let servers = words
        .map(|w| w.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{}: not a list of server addresses", path.display()))?;
    Ok(Promised { view, servers })
}

/// Makes the promises of this turn durable, before anything that depends on them (the
/// `Accept`s) is written to a socket: each file is written beside its final name, made
/// durable, then renamed over the old one, and the rename made durable too. Two promises
/// of one number could elect two primaries, so a promise must outlive an OS crash.
///
/// One promise (`pbvote client`): fsync of the file, then of its folder. Several (the bench
/// hosts hundreds of clients on one file system): one `syncfs` for all the files and one
/// for all the renames, instead of two fsyncs per client, serialised on one disk (measured:
/// 100 clients, 75 ms of a failover spent in fsync; TMPDIR on tmpfs, 2.5 ms).
fn write_promises(promises: &[(PathBuf, ViewInfo)]) -> Result<(), (PathBuf, io::Error)> {
    let tmp_of = |path: &Path| {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    };
    let batch = promises.len() > 1;
    for (path, view) in promises {
        let fail = |e: io::Error| (path.clone(), e);
        let mut file = File::create(tmp_of(path)).map_err(fail)?;
        let mut line = view.number.0.to_string();
        for addr in view.servers() {
            line.push_str(&format!(" {addr}"));
        }
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(fail)?;
        if !batch {
            file.sync_all().map_err(fail)?;
        }
    }
    // Every promise file of one host lives on one file system in practice; where the
    // folders differ, each one's file system is synced.
    let mut dirs: Vec<&Path> = promises.iter().map(|(p, _)| folder_of(p)).collect();
    dirs.sort_unstable();
    dirs.dedup();
    let sync_folders = |how: fn(&File) -> io::Result<()>| -> Result<(), (PathBuf, io::Error)> {
        for dir in &dirs {
            File::open(dir)
                .and_then(|d| how(&d))
                .map_err(|e| (dir.to_path_buf(), e))?;
        }
        Ok(())
    };
    if batch {
        sync_folders(sync_file_system)?;
    }
    for (path, _) in promises {
        std::fs::rename(tmp_of(path), path).map_err(|e| (path.clone(), e))?;
    }
    // syncfs(2) reports write-back errors only from Linux 5.8 on; fsync always does.
    sync_folders(if batch {
        sync_file_system
    } else {
        File::sync_all
    })
}

/// The folder a file is in (a bare name's parent is "": the current folder).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sync_file_system(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs(2) on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub struct Hosted {
    pub core: Client,
    pub log: File,
    promise_path: PathBuf,
    /// Lines appended by the core this turn, written before any socket is flushed.
    pending: Vec<u8>,
}

impl Hosted {
    pub fn new(core: Client, log: File, log_path: &Path) -> Hosted {
        Hosted {
            core,
            log,
            promise_path: promise_path(log_path),
            pending: Vec::new(),
        }
    }
}

/// What the bench watches on a host: when each ballot was first asked for, and when the
/// last hosted client logged it.
#[derive(Debug, Default)]
pub struct Probe {
    first_asked: HashMap<u64, Instant, SeqHash>,
    logged: HashMap<u64, u32, SeqHash>,
    /// Every ballot all hosted clients logged, in the order they completed.
    pub done: Vec<BallotSeen>,
    /// Watch for a result tagged with a view above this one (a failover)...
    pub views_above: Option<u64>,
    /// ...and note when the first one arrived.
    pub first_result_above: Option<Instant>,
}

/// The probe looks up a seq for every client on every ballot: a multiply-shift hash of
/// the number instead of SipHash (these keys are ours, not an attacker's).
#[derive(Clone, Copy, Debug, Default)]
struct SeqHash;

impl std::hash::BuildHasher for SeqHash {
    type Hasher = SeqHasher;
    fn build_hasher(&self) -> SeqHasher {
        SeqHasher(0)
    }
}

struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

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
    fn saw(&mut self, msg: &ServerMsg, now: Instant) {
        match msg {
            ServerMsg::VoteRequest { first, count, .. } => {
                let count = u64::from(*count).min(MAX_OPEN_BALLOTS);
                for seq in first.0..first.0.saturating_add(count) {
                    self.first_asked.entry(seq).or_insert(now);
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
            | ServerMsg::Refused { .. } => {}
        }
    }

    fn logged(&mut self, seq: u64, votes: u64, clients: u32, now: Instant) {
        let count = self.logged.entry(seq).or_insert(0);
        *count += 1;
        if *count == clients {
            self.logged.remove(&seq);
            self.done.push(BallotSeen {
                seq,
                asked: self.first_asked.remove(&seq),
                done: now,
                votes,
            });
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
    /// The connections a held message goes to (kept to reuse its allocation).
    send_to: Vec<ConnId>,
    /// Promises made this turn: `(<log>.view, view)`.
    promises: Vec<(PathBuf, ViewInfo)>,
    shutdown: bool,
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
            promises: Vec::new(),
            shutdown: false,
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

    pub fn all_done(&self) -> bool {
        self.clients.iter().all(|c| c.core.is_done())
    }

    /// Runs until every client is done (`--until`), a signal, or `deadline`.
    pub fn run(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            let now = Instant::now();
            self.after_turn(now)?;
            if self.shutdown || self.all_done() || deadline.is_some_and(|d| d <= now) {
                return Ok(());
            }
            let wake = [self.wheel.next_deadline(), deadline]
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
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        for signal in self.signals.pending() {
                            info!("signal number={signal}");
                            self.shutdown = true;
                        }
                    }
                    token => self.on_conn_event(token, event, now),
                }
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
        if !self.promises.is_empty() {
            write_promises(&self.promises).map_err(|(path, e)| {
                io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            })?;
            self.promises.clear();
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
        Ok(())
    }

    fn drain_outputs(&mut self, i: usize, now: Instant) {
        // The same message to several servers in a row (the votes go to both) is encoded
        // once: held, with its connections, until a different output comes.
        let mut ids = std::mem::take(&mut self.send_to);
        let mut held: Option<ClientMsg> = None;
        while let Some(output) = self.clients[i].core.poll_output() {
            if let ClientOutput::Send(id, msg) = output {
                if held.as_ref() != Some(&msg) {
                    self.send_held(&mut ids, held.replace(msg), now);
                }
                ids.push(id);
                continue;
            }
            self.send_held(&mut ids, held.take(), now);
            match output {
                ClientOutput::Dial(addr) => self.dial(i, addr, now),
                ClientOutput::Hello(id, hello) => self.queue(id, &hello, now),
                ClientOutput::Send(..) => {}
                ClientOutput::Close(id) => {
                    self.conns.close_after_flush(id);
                }
                ClientOutput::Promise(view) => {
                    // Made durable at the end of the turn, before any socket is written:
                    // before the Accept it guards leaves.
                    let path = self.clients[i].promise_path.clone();
                    match self.promises.iter_mut().find(|(p, _)| *p == path) {
                        Some((_, v)) if v.number < view.number => *v = view,
                        Some(_) => {}
                        None => self.promises.push((path, view)),
                    }
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
        self.send_held(&mut ids, held, now);
        self.send_to = ids;
    }

    /// Queues `msg` (if any) on each of `ids`, encoded once, and empties `ids`.
    fn send_held(&mut self, ids: &mut Vec<ConnId>, msg: Option<ClientMsg>, now: Instant) {
        if let Some(msg) = msg {
            if let [id] = ids[..] {
                self.queue(id, &msg, now);
            } else {
                for (id, e) in self.conns.queue_to_all(ids, &msg) {
                    warn!("send-failed conn={id} error={e}");
                    self.close_now(id, now);
                }
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
                let Some(conn) = self.conns.get_mut(id) else {
                    return;
                };
                match conn.next_frame::<ServerMsg>() {
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

/// How long `pbvote client` waits between redials of a server that is down.
pub const REDIAL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn promised(view: u64, servers: Vec<SocketAddr>) -> Promised {
        Promised {
            view: View(view),
            servers,
        }
    }

    #[test]
    fn promises_are_written_alone_and_in_a_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = |name: &str| dir.path().join(name);
        let (p, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:7000".parse().expect("addr"),
            "127.0.0.1:7001".parse().expect("addr"),
        );
        let view = |n, backup| ViewInfo {
            number: View(n),
            primary: p,
            backup,
        };
        assert_eq!(read_promise(&log("a.log")), Ok(promised(0, vec![])));
        // One promise: the fsync path. Then a batch over it and a new one: the syncfs path.
        write_promises(&[(promise_path(&log("a.log")), view(3, None))]).expect("one");
        assert_eq!(read_promise(&log("a.log")), Ok(promised(3, vec![p])));
        write_promises(&[
            (promise_path(&log("a.log")), view(7, Some(b))),
            (promise_path(&log("b.log")), view(7, Some(b))),
        ])
        .expect("batch");
        assert_eq!(read_promise(&log("a.log")), Ok(promised(7, vec![p, b])));
        assert_eq!(read_promise(&log("b.log")), Ok(promised(7, vec![p, b])));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // A file from before addresses were kept: the number alone.
        std::fs::write(promise_path(&log("c.log")), "5\n").expect("write");
        assert_eq!(read_promise(&log("c.log")), Ok(promised(5, vec![])));
        std::fs::write(promise_path(&log("d.log")), "5 nowhere\n").expect("write");
        assert!(read_promise(&log("d.log")).is_err());
    }

    /// `--log c.log` names a file in the current folder: its rename must be made durable
    /// there, not skipped because the parent path is empty.
    #[test]
    fn a_bare_file_name_lives_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("c.log.view")), Path::new("."));
        assert_eq!(folder_of(Path::new("logs/c.log.view")), Path::new("logs"));
        assert_eq!(folder_of(Path::new("/c.log.view")), Path::new("/"));
    }
}
