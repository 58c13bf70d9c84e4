//! fork/exec of a backup: the same binary, `server --role backup`, joining us.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

/// What a spawned backup inherits from the server that spawns it.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    /// Where the backup listens (`--backup-listen`; port 0 lets it pick).
    pub listen: SocketAddr,
    pub heartbeat: Duration,
    pub miss_limit: u32,
    pub backup_start_delay: Duration,
    pub ballot_interval: Duration,
    pub ballots: Option<u64>,
    pub window: u64,
    pub min_clients: usize,
    pub absent_after_ms: Option<u64>,
    /// `--max-connections`, if given (else the backup sizes its own from its limit).
    pub max_connections: Option<usize>,
    pub log_level: String,
    /// `--spawn-via`: a program that starts the backup where its address lives (another
    /// network namespace, another host), run as `PROGRAM LISTEN_ADDR PBVOTE ARGS...`; it
    /// must exec the rest of its arguments so the child we wait for is the backup itself.
    pub via: Option<PathBuf>,
}

/// Starts `pbvote server --role backup --join primary` as our child. It inherits our
/// process group, stdout and stderr, so it shows in the same terminal and dies with the
/// group a test or a shell kills.
pub fn spawn_backup(spec: &SpawnSpec, primary: SocketAddr) -> std::io::Result<Child> {
    // Once primary itself, the backup respawns on our address: the pair keeps swapping
    // between the two addresses clients were given, so a restarted client finds it.
    let exe = std::env::current_exe()?;
    let mut cmd = match &spec.via {
        Some(via) => {
            let mut cmd = Command::new(via);
            cmd.arg(spec.listen.to_string()).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    // Our supervisor's socket is ours: the backup's own supervisor, if any, is elsewhere.
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    cmd.arg("server")
        .args(["--role", "backup"])
        .args(["--listen", &spec.listen.to_string()])
        .args(["--join", &primary.to_string()])
        .args(["--backup-listen", &primary.to_string()])
        .args(["--heartbeat-ms", &spec.heartbeat.as_millis().to_string()])
        .args(["--miss-limit", &spec.miss_limit.to_string()])
        .args([
            "--backup-start-delay-ms",
            &spec.backup_start_delay.as_millis().to_string(),
        ])
        .args([
            "--ballot-interval-ms",
            &spec.ballot_interval.as_millis().to_string(),
        ])
        .args(["--window", &spec.window.to_string()])
        .args(["--min-clients", &spec.min_clients.to_string()])
        .args(["--log-level", &spec.log_level]);
    if let Some(n) = spec.ballots {
        cmd.args(["--ballots", &n.to_string()]);
    }
    if let Some(ms) = spec.absent_after_ms {
        cmd.args(["--absent-after-ms", &ms.to_string()]);
    }
    if let Some(n) = spec.max_connections {
        cmd.args(["--max-connections", &n.to_string()]);
    }
    if let Some(via) = &spec.via {
        cmd.arg("--spawn-via").arg(via);
    }
    cmd.spawn()
}
