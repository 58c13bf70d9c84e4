//! The cut primary-backup link, with real processes in network namespaces: the scenarios
//! of scripts/partition.sh, each ending with the log checker's verdict. They need root and
//! iproute2; elsewhere they are skipped with a message saying so.

use std::process::Command;
use std::sync::Mutex;

/// One scenario at a time: each builds three namespaces and runs eight processes.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs scripts/partition.sh with `env`; its stdout, or `None` where it cannot run.
fn partition(env: &[(&str, &str)]) -> Option<String> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !ip {
        eprintln!("SKIPPED: the partition tests need root and iproute2 (root={root}, ip={ip})");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/partition.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("BIN", env!("CARGO_BIN_EXE_pbvote"))
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/partition.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("G1 G2 G3 hold"),
        "partition scenario failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    Some(stdout)
}

/// The "done when": 5 clients, 80 ballots, 8 cut-and-heal cycles, 30 % of the cuts
/// with a SIGKILL of a random side.
#[test]
fn cut_and_healed_link_with_kills_leaves_every_log_exact() {
    partition(&[("CYCLES", "8"), ("BALLOTS", "80"), ("KILL_PCT", "30")]);
}

#[test]
fn cut_and_paused_primary_is_fenced_when_it_resumes() {
    let Some(out) = partition(&[("CYCLES", "2"), ("BALLOTS", "60"), ("STOP_PRIMARY", "1")]) else {
        return;
    };
    assert_eq!(out.matches("resumed: stepped-down").count(), 2, "{out}");
}
