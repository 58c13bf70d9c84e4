//! Real processes on loopback: a primary, the backup it spawns, and clients.

mod common;

use common::*;
use pbvote::client::policy::Policy;
use std::time::Duration;

#[test]
fn primary_spawned_backup_and_five_clients_log_thirty_exact_ballots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_primary, addr) = start_primary(dir.path(), &["--ballots", "30", "--min-clients", "5"]);
    // The spawned backup logs into the primary's stderr; wait until it is in service so
    // that every ballot after the first few runs the full commit-before-telling path.
    let clients: Vec<(&str, Policy)> = vec![
        ("y1", Policy::Yes),
        ("y2", Policy::Yes),
        ("y3", Policy::Yes),
        ("n1", Policy::No),
        ("n2", Policy::No),
    ];
    let mut procs: Vec<Proc> = clients
        .iter()
        .map(|(id, p)| start_client(dir.path(), id, &addr, &p.to_string(), 30))
        .collect();
    for p in &mut procs {
        let status = p.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{} exited {status}", p.name);
    }
    let primary_err = dir.path().join("primary.err");
    let joined = std::fs::read_to_string(&primary_err).unwrap_or_default();
    assert!(
        joined.contains("view-change role=backup"),
        "the spawned backup never joined:\n{joined}"
    );
    for (id, _) in &clients {
        let log = std::fs::read_to_string(dir.path().join(format!("{id}.log"))).expect("log");
        let want: String = (1..=30).map(|k| format!("{k} 3 2\n")).collect();
        assert_eq!(log, want, "log of {id}");
    }
    assert_eq!(check_logs(dir.path(), &clients, 30), vec![]);
}

#[test]
fn status_reports_role_view_clients_and_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, addr) = start_primary(dir.path(), &["--ballots", "3"]);
    // The client stays: it is a witness the view that adds the backup needs.
    let _client = start_client(dir.path(), "solo", &addr, "yes", 1000);
    primary.wait_line("view-change role=backup", Duration::from_secs(10));
    primary.wait_line("ballot-result seq=3 ", Duration::from_secs(10));
    let out = std::process::Command::new(BIN)
        .args(["status", "--server", &addr, "--json"])
        .output()
        .expect("run status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["role"], "Primary");
    assert_eq!(json["committed"], 3);
    assert_eq!(json["clients"][0], "solo");
    assert_eq!(json["peer"]["connected"], true);
    assert!(json["view"]["backup"].is_string(), "{json}");
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--heartbeat-ms", "50", "--json"])
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Not a speed test: the bench runs end to end, reports, and checks every client log.
#[test]
fn bench_completes_ballots_and_checks_its_logs() {
    let json = bench(&["--clients", "10", "--window", "4", "--ballots", "30"]);
    assert_eq!(json["logs_exact"], true, "{json}");
    assert_eq!(json["processes"], 1, "{json}");
    // With --ballots every ballot counts: 30 ballots, 10 votes each.
    assert_eq!(json["ballots"], 30, "{json}");
    assert_eq!(json["votes"], 300, "{json}");
}

/// `--failover` with the clients split over worker processes (how it runs at 10,000
/// clients): the workers' clients take part in the takeover, both the failover and the
/// respawn are timed, and every log (the workers' too) is exact through it.
#[test]
fn bench_failover_with_worker_processes_keeps_every_log_exact() {
    let json = bench(&[
        "--clients",
        "6",
        "--clients-per-process",
        "2",
        "--window",
        "2",
        "--duration",
        "1",
        "--failover",
    ]);
    assert_eq!(json["processes"], 3, "{json}");
    assert_eq!(json["logs_exact"], true, "{json}");
    assert!(json["failover_ms"].as_f64().is_some(), "{json}");
    assert!(json["respawn_ms"].as_f64().is_some(), "{json}");
    assert!(json["ballots"].as_u64().unwrap_or(0) > 0, "{json}");
}

/// The clients split over worker processes (as when one process may not open enough
/// descriptors): every ballot is counted once, from all of them, and every log checked.
#[test]
fn bench_with_worker_processes_merges_what_each_saw() {
    let json = bench(&[
        "--clients",
        "7",
        "--clients-per-process",
        "3",
        "--window",
        "4",
        "--ballots",
        "25",
    ]);
    assert_eq!(json["processes"], 3, "{json}");
    assert_eq!(json["logs_exact"], true, "{json}");
    assert_eq!(json["ballots"], 25, "{json}");
    assert_eq!(json["votes"], 175, "{json}");
    assert!(
        json["latency_max_ms"].as_f64().unwrap_or(0.0) > 0.0,
        "{json}"
    );
}
