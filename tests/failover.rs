//! Crash failover with real processes on loopback: SIGKILL and SIGSTOP of either replica,
//! a client restart. Every test ends with the log checker: every client log exactly
//! 1..N, all identical, every vote counted. All server logs land in `primary.err` (the
//! spawned backups inherit the primary's stderr), tagged `role[pid]`.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn primary_killed_mid_ballot_loses_no_vote() {
    let mut c = Cluster::start(60, &[]);
    wait_line(&c.err, "view-change role=backup", T);
    // An installed backup reads its clients' votes in batches...
    wait_line(&c.err, "client-reads mode=batched", T);
    wait_line(&c.err, "ballot-open seq=15 ", T);
    signal(c.primary.pid(), libc::SIGKILL);
    // ...and at once again from its proposal on: the votes it holds finish the past.
    wait_line(&c.err, "client-reads mode=immediate", T);
    wait_line(&c.err, "took_over=true", T);
    c.finish_and_check();
    c.assert_every_log_is_3_yes_2_no();
}

#[test]
fn spawned_backup_killed_is_noticed_through_sigchld_and_replaced() {
    let mut c = Cluster::start(50, &[]);
    let err = c.err.clone();
    let backup = pid_of_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-open seq=10 ", T);
    signal(backup, libc::SIGKILL);
    wait_line(&err, &format!("backup-exited pid={backup}"), T);
    // Noticed at once, through SIGCHLD or the closed connection, whichever came first;
    // not by missed heartbeats.
    let noticed = wait_line(&err, "peer-dead role=primary", T);
    assert!(!noticed.contains("missed-heartbeats"), "{noticed}");
    // A second backup process joins and is installed.
    wait_count(&err, "view-change role=backup", 2, T);
    c.finish_and_check();
}

#[test]
fn backup_killed_while_joining_is_respawned() {
    // Enough ballots that the clients, the witnesses every view change needs, are still
    // there when the third backup joins.
    let mut c = Cluster::start(200, &["--backup-start-delay-ms", "300"]);
    let err = c.err.clone();
    // Killed in its start delay, before it dialed.
    let first = pid_of_line(&err, "started role=joining", T);
    signal(first, libc::SIGKILL);
    wait_line(&err, &format!("backup-exited pid={first}"), T);
    // Killed as it joins: the state transfer is quick here, so this lands anywhere
    // from the dial to just after the install. Every case must lose nothing.
    wait_count(&err, "join-start", 1, T);
    let second = pid_of_line(&err, "join-start", T);
    signal(second, libc::SIGKILL);
    wait_line(&err, &format!("backup-exited pid={second}"), T);
    wait_count(&err, "started role=joining", 3, T);
    wait_line(&err, "view-change role=backup", T);
    c.finish_and_check();
}

#[test]
fn primary_paused_past_detection_is_fenced_when_it_resumes() {
    let mut c = Cluster::start(50, &[]);
    let (err, pid) = (c.err.clone(), c.primary.pid());
    wait_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-open seq=10 ", T);
    signal(pid, libc::SIGSTOP);
    wait_line(&err, "took_over=true", T);
    // The new primary completes ballots while the old one sleeps.
    let results = lines_with(&err, "ballot-result").len();
    wait_count(&err, "ballot-result", results + 5, T);
    signal(pid, libc::SIGCONT);
    let stepped = wait_line(&err, "stepped-down", T);
    assert!(stepped.starts_with(&format!("primary[{pid}]")), "{stepped}");
    c.finish_and_check();
}

#[test]
fn client_killed_and_restarted_resumes_from_its_log() {
    let mut c = Cluster::start(50, &[]);
    let err = c.err.clone();
    wait_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-open seq=10 ", T);
    c.procs[3].kill_group();
    wait_line(&err, "client-gone client=n1", T);
    let before = std::fs::read_to_string(c.dir.path().join("n1.log")).expect("log");
    c.procs[3] = start_client(c.dir.path(), "n1", &c.addr, "no", c.ballots);
    wait_count(&err, "client-registered client=n1 ", 2, T);
    let again = lines_with(&err, "client-registered client=n1 ")
        .pop()
        .expect("line");
    assert!(
        again.contains(&format!("last_seq={}", before.lines().count())),
        "the restarted client did not report its last logged seq: {again}"
    );
    c.finish_and_check();
}

#[test]
fn cold_restart_rebuilds_from_client_logs_and_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ballots = 60;
    let (p, b) = (probe_port(), probe_port());
    let (p_addr, b_addr) = (format!("127.0.0.1:{p}"), format!("127.0.0.1:{b}"));
    let servers = format!("{p_addr},{b_addr}");
    let args = [
        "server",
        "--role",
        "primary",
        "--listen",
        &p_addr,
        "--backup-listen",
        &b_addr,
        "--heartbeat-ms",
        "50",
        "--backup-start-delay-ms",
        "200",
        "--ballot-interval-ms",
        "10",
        "--ballots",
        "60",
        "--min-clients",
        "5",
    ];
    let mut old = Proc::start(dir.path(), "primary", &args);
    let clients = three_yes_two_no();
    let mut procs = start_clients(dir.path(), &clients, &servers, ballots);
    let err = dir.path().join("primary.err");
    wait_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-open seq=20 ", T);
    // Both replicas at once: the primary's process group holds its spawned backup.
    old.kill_group();
    // A fresh primary on the same address, knowing nothing.
    let _fresh = Proc::start(dir.path(), "fresh", &args);
    let fresh_err = dir.path().join("fresh.err");
    wait_line(&fresh_err, "cold-restart-recovered", T);
    finish_and_check(dir.path(), &mut procs, &clients, ballots);
}

/// The "done when" of the crash-failover issue: 5 clients, 80 ballots, 6 SIGKILLs of a
/// random replica, each after the previous replacement joined.
#[test]
fn six_kills_of_random_replicas_leave_every_log_exact() {
    let mut c = Cluster::start(80, &["--ballot-interval-ms", "60"]);
    let (err, ballots) = (c.err.clone(), c.ballots);
    // A fixed pattern that a seed would pick: P B P P B P.
    let kill_primary = [true, false, true, true, false, true];
    let mut primary_pid = c.primary.pid();
    for (round, &kill_p) in kill_primary.iter().enumerate() {
        wait_count(&err, "view-change role=backup", round + 1, T);
        let backup_pid = pid_of_line(&err, "view-change role=backup", T);
        let results = lines_with(&err, "ballot-result").len();
        assert!(
            results + 2 < ballots as usize,
            "ballots ran out before kill {round}"
        );
        wait_count(&err, "ballot-result", results + 2, T);
        if kill_p {
            signal(primary_pid, libc::SIGKILL);
            // The backup takes over; it is the primary from now on.
            wait_count(
                &err,
                "took_over=true",
                kill_primary[..=round].iter().filter(|k| **k).count(),
                T,
            );
            primary_pid = backup_pid;
        } else {
            signal(backup_pid, libc::SIGKILL);
            wait_line(&err, &format!("backup-exited pid={backup_pid}"), T);
        }
    }
    c.finish_and_check();
    c.assert_every_log_is_3_yes_2_no();
}

/// A backup whose primary is gone (here: never was) does not retry for ever: once its
/// primary would have replaced it, it gives up and exits.
#[test]
fn joiner_with_no_primary_gives_up() {
    let dir = test_dir();
    let nobody = format!("127.0.0.1:{}", probe_port());
    let mut backup = Proc::start(
        dir.path(),
        "backup",
        &[
            "server",
            "--role",
            "backup",
            "--listen",
            "127.0.0.1:0",
            "--join",
            &nobody,
            "--heartbeat-ms",
            "20",
            "--miss-limit",
            "3",
            "--backup-start-delay-ms",
            "50",
        ],
    );
    // Start delay 50 ms + 3 x 60 ms: it gives up at its first retry after ~230 ms.
    let status = backup.wait_exit(T);
    assert!(status.success(), "{status}");
    let line = backup.wait_line("stepped-down role=joining", T);
    assert!(line.contains("no primary to join"), "{line}");
    assert!(lines_with(&dir.path().join("backup.err"), "join-failed").len() >= 2);
}
