//! systemd's readiness protocol (`sd_notify(3)`), by hand: one datagram per message to
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract address). `READY=1` once the
//! server may serve (a primary acting as one, a backup once joined), `STATUS=` with role
//! and view on every change, `WATCHDOG=1` at half of `$WATCHDOG_USEC`, `STOPPING=1` on the
//! way out. Without `$NOTIFY_SOCKET` all of it is a no-op.

use crate::proto::{Role, ViewInfo};
use log::{info, warn};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub struct Notifier {
    socket: UnixDatagram,
    addr: UnixAddr,
    /// Half the watchdog interval systemd asked for: how often `WATCHDOG=1` goes out.
    watchdog_every: Option<Duration>,
    next_watchdog: Option<Instant>,
    ready: bool,
    said: Option<String>,
}

impl Notifier {
    /// From the environment systemd set, if it set `NOTIFY_SOCKET`.
    pub fn from_env(now: Instant) -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                UnixAddr::from_abstract_name(name.as_bytes())
            }
            None => UnixAddr::from_pathname(&path),
        };
        let socket = UnixDatagram::unbound();
        let (addr, socket) = match (addr, socket) {
            (Ok(addr), Ok(socket)) => (addr, socket),
            (Err(e), _) | (_, Err(e)) => {
                warn!("notify-failed socket={path} error={e}");
                return None;
            }
        };
        // WATCHDOG_PID, when set, names the one process meant (not a child we spawned).
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|&us| us > 0 && ours)
            .map(|us| Duration::from_micros(us / 2));
        info!(
            "notify socket={path} watchdog_ms={}",
            watchdog_every.map_or("off".to_string(), |d| (d * 2).as_millis().to_string())
        );
        Some(Notifier {
            socket,
            addr,
            watchdog_every,
            next_watchdog: watchdog_every.map(|_| now),
            ready: false,
            said: None,
        })
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            warn!("notify-failed message={msg:?} error={e}");
        }
    }

    /// After each loop turn: `READY=1` the first time the server may serve, `STATUS=`
    /// when its role or view changed.
    pub fn update(&mut self, role: Role, view: ViewInfo, serving: bool) {
        let status = format!("STATUS={role} in view {view}");
        if !self.ready && serving {
            self.ready = true;
            self.send(&format!("READY=1\n{status}"));
            self.said = Some(status);
            return;
        }
        if self.said.as_deref() != Some(status.as_str()) {
            self.send(&status);
            self.said = Some(status);
        }
    }

    /// When the loop must wake to pet the watchdog.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Pets the watchdog if it is due: the loop is turning.
    pub fn on_time(&mut self, now: Instant) {
        let (Some(due), Some(every)) = (self.next_watchdog, self.watchdog_every) else {
            return;
        };
        if due <= now {
            self.send("WATCHDOG=1");
            self.next_watchdog = Some(now + every);
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}
