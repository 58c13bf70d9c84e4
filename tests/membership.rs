//! Membership with real processes on loopback: clients join while ballots run, and leave
//! by SIGTERM or at `--until`, and the ballots after a change count the new electorate
//! while every log stays exact (G1) and agrees with every other (G2).

mod common;

use common::*;
use pbvote::check::{self, ClientLog, Expect};
use pbvote::client::policy::Policy;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Each ballot's electorate size, from the servers' `ballot-open seq= voters=` lines (the
/// last one for a seq: a takeover may open it again).
fn voters_per_ballot(err: &std::path::Path) -> BTreeMap<u64, u32> {
    let mut voters = BTreeMap::new();
    for line in lines_with(err, "ballot-open seq=") {
        let field = |name: &str| -> Option<u64> {
            let rest = line.split(&format!(" {name}=")).nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        };
        if let (Some(seq), Some(n)) = (field("seq"), field("voters")) {
            voters.insert(seq, n as u32);
        }
    }
    voters
}

/// G1 and G2 over the logs of `clients` (a client in `left` may stop short); G3's counts
/// come from the servers' own electorates, checked by the caller.
fn assert_exact_and_agreeing(dir: &Path, clients: &[(&str, Policy)], ballots: u64, left: &[&str]) {
    let logs: Vec<ClientLog> = (clients.iter())
        .map(|(id, policy)| {
            let text = fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
            ClientLog::parse(id, &text, Some(*policy)).expect("log parses")
        })
        .collect();
    let expect = Expect {
        ballots: Some(ballots),
        left: left.iter().map(|l| l.to_string()).collect(),
        ..Expect::default()
    };
    let found = check::check(&logs, &expect);
    let broken: Vec<_> = found.iter().filter(|v| v.guarantee != "G3").collect();
    assert!(broken.is_empty(), "{broken:#?}");
}

/// `(seq, votes counted)` of every line of a client's log.
fn counted_per_ballot(log: &Path) -> Vec<(u64, u32)> {
    let text = fs::read_to_string(log).unwrap_or_default();
    (text.lines())
        .map(|line| {
            let nums: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
            (nums[0], (nums[1] + nums[2]) as u32)
        })
        .collect()
}

/// j1 (yes) and j2 (no) start while ballots run; once they are members (7 voters) the
/// clients' names with theirs, for the log checks.
fn add_two_joiners(c: &Cluster) -> ([Proc; 2], Vec<(&'static str, Policy)>) {
    let dir = c.dir.path();
    let joiners = [
        start_client(dir, "j1", &c.addr, "yes", c.ballots),
        start_client(dir, "j2", &c.addr, "no", c.ballots),
    ];
    wait_line(&c.err, "voters=7 ", T);
    let mut names = c.clients.clone();
    names.extend([("j1", Policy::Yes), ("j2", Policy::No)]);
    (joiners, names)
}

/// SIGTERM: the client asks to leave, is told `client-left`, and exits 0.
fn leave_by_sigterm(client: &mut Proc) {
    signal(client.pid(), libc::SIGTERM);
    client.wait_line("client-left", T);
    let status = client.wait_exit(T);
    assert!(status.success(), "the leaver exited {status}");
}

/// Each of `procs` exits 0.
fn all_exit_ok<'a>(procs: impl Iterator<Item = &'a mut Proc>) {
    for p in procs {
        let status = p.wait_exit(Duration::from_secs(120));
        assert!(status.success(), "{} exited {status}", p.name);
    }
}

#[test]
fn clients_join_and_leave_while_ballots_run() {
    let ballots = 60;
    let mut c = Cluster::start(ballots, &["--ballot-interval-ms", "30"]);
    let (dir, err) = (c.dir.path().to_path_buf(), c.err.clone());
    wait_line(&err, "ballot-open seq=10 ", T);
    let (mut joiners, names) = add_two_joiners(&c);
    // One of the first five leaves by SIGTERM: asked, agreed, and gone with exit 0.
    let leaver = c.clients[4].0;
    leave_by_sigterm(&mut c.procs[4]);
    wait_line(&err, "voters=6 ", T);
    all_exit_ok(c.procs[..4].iter_mut().chain(joiners.iter_mut()));

    assert_exact_and_agreeing(&dir, &names, ballots, &[leaver]);
    let voters = voters_per_ballot(&err);
    for (seq, counted) in counted_per_ballot(&dir.join("n1.log")) {
        assert_eq!(Some(&counted), voters.get(&seq), "ballot {seq}");
    }
    let sizes: Vec<u32> = voters.values().copied().collect();
    assert!(
        sizes.contains(&5) && sizes.contains(&7) && sizes.contains(&6),
        "{sizes:?}"
    );
    let left = fs::read_to_string(dir.join(format!("{leaver}.log"))).unwrap_or_default();
    assert!(
        (left.lines().count() as u64) < ballots,
        "the leaver logged every ballot"
    );
}

/// A SIGKILLed client is a crash, not a leave: the ballots wait for it. `remove-client`,
/// pointed at the backup (which names the primary), takes it out: it says which ballots
/// it unblocked, those complete without its vote, and the rest count one voter fewer.
#[test]
fn a_client_killed_for_good_is_removed_with_remove_client() {
    let ballots = 40;
    let mut c = Cluster::start(ballots, &["--ballot-interval-ms", "20"]);
    let (dir, err) = (c.dir.path().to_path_buf(), c.err.clone());
    wait_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-open seq=8 ", T);
    c.procs[4].kill_group();
    let status = pbvote(&["status", "--server", &c.addr, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let backup = status["peer"]["addr"]
        .as_str()
        .expect("a backup")
        .to_string();
    let unknown = pbvote(&["remove-client", "--server", &c.addr, "--id", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    let out = pbvote(&["remove-client", "--server", &backup, "--id", "n2", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reply json");
    assert_eq!(reply["removed"], "n2");
    let unblocked: Vec<u64> = (reply["unblocked"].as_array().expect("unblocked").iter())
        .filter_map(|s| s.as_u64())
        .collect();
    wait_line(&err, "client-removed client=n2 reason=operator", T);
    all_exit_ok(c.procs[..4].iter_mut());
    let voters = voters_per_ballot(&err);
    let n1 = counted_per_ballot(&dir.join("n1.log"));
    assert_eq!(n1.len() as u64, ballots);
    for (seq, counted) in n1 {
        let opened = voters[&seq];
        let without_n2 = unblocked.contains(&seq) && counted + 1 == opened;
        assert!(
            counted == opened || without_n2,
            "ballot {seq}: {counted} counted, opened with {opened}"
        );
    }
    assert!(voters.values().any(|&v| v == 4), "{voters:?}");
    assert_exact_and_agreeing(&dir, &c.clients, ballots, &["n2"]);
}

/// Issue 12's "done when": five clients vote while two more join, one leaves by SIGTERM,
/// one is SIGKILLed and removed with `remove-client`, and the backup and then the primary
/// are each SIGKILLed once. Every log is contiguous, all agree line by line, and the run
/// reaches its last ballot.
#[test]
fn membership_changes_and_both_replicas_killed_in_one_run() {
    let ballots = 200;
    let mut c = Cluster::start(ballots, &["--ballot-interval-ms", "40"]);
    let (dir, err) = (c.dir.path().to_path_buf(), c.err.clone());
    wait_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-open seq=5 ", T);
    let (mut joiners, names) = add_two_joiners(&c);
    leave_by_sigterm(&mut c.procs[4]);
    // n1 dies for good and is removed.
    c.procs[3].kill_group();
    let out = pbvote(&["remove-client", "--server", &c.addr, "--id", "n1"]);
    assert!(out.status.success(), "{out:?}");
    wait_line(&err, "client-removed client=n1 reason=operator", T);
    wait_line(&err, "voters=5 ", T);
    // The backup dies; its replacement joins; then the primary dies and it takes over.
    let backup = pid_of_line(&err, "view-change role=backup", T);
    signal(backup, libc::SIGKILL);
    wait_line(&err, &format!("backup-exited pid={backup}"), T);
    let deadline = std::time::Instant::now() + T;
    while pid_of_line(&err, "view-change role=backup", T) == backup {
        assert!(
            std::time::Instant::now() < deadline,
            "no backup joined again"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let results = lines_with(&err, "ballot-result").len();
    wait_count(&err, "ballot-result", results + 2, T);
    assert!(
        lines_with(&err, "ballot-result").len() + 10 < ballots as usize,
        "the ballots ran out before the primary was killed"
    );
    signal(c.primary.pid(), libc::SIGKILL);
    wait_line(&err, "took_over=true", T);
    all_exit_ok(c.procs[..3].iter_mut().chain(joiners.iter_mut()));

    assert_exact_and_agreeing(&dir, &names, ballots, &["n1", "n2"]);
    for id in ["y1", "j2"] {
        let logged = counted_per_ballot(&dir.join(format!("{id}.log")));
        assert_eq!(
            logged.len() as u64,
            ballots,
            "{id} did not reach the last ballot"
        );
    }
    let voters = voters_per_ballot(&err);
    let sizes: Vec<u32> = voters.values().copied().collect();
    // Five, seven with the joiners, five again without the leaver and the removed one
    // (six only if a ballot opened between the two).
    let first_seven = sizes
        .iter()
        .position(|&n| n == 7)
        .expect("ballots with 7 voters");
    assert!(sizes[..first_seven].iter().all(|&n| n == 5), "{sizes:?}");
    assert!(sizes.last() == Some(&5), "{sizes:?}");
}

/// A log from another history (another cluster's, or the tail of one a cold restart
/// gave up) is never continued: its hello is refused as `client-diverged`, and not one
/// line is added to it, although this history is longer than that log (before, only a
/// log longer than the history was told apart).
#[test]
fn a_log_of_another_history_is_refused_not_continued() {
    let dir = test_dir();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    fs::create_dir_all(&one).expect("mkdir");
    fs::create_dir_all(&two).expect("mkdir");
    // History one: x alone votes yes on 5 ballots, and leaves.
    let (mut first, addr) = start_primary(&one, &[]);
    let mut x = start_client(&one, "x", &addr, "yes", 5);
    assert!(x.wait_exit(T).success(), "{}", tail(&x.stderr, 20));
    first.kill_group();
    let x_log = one.join("x.log");
    let logged = fs::read_to_string(&x_log).expect("x log");
    assert_eq!(
        logged,
        (1..=5).map(|k| format!("{k} 1 0\n")).collect::<String>()
    );

    // History two, another cluster: y votes no, and it has passed x's last seq.
    let (mut second, addr) = start_primary(&two, &[]);
    let _y = start_client(&two, "y", &addr, "no", 1000);
    wait_line(&two.join("y.log"), "8 0 1", T);
    let args = ["client", "--id", "x", "--servers", &addr, "--policy", "yes"];
    let log = x_log.to_str().expect("utf-8 path");
    let mut x = Proc::start(
        &two,
        "x-again",
        &[&args[..], &["--log", log, "--until", "20"]].concat(),
    );
    second.wait_line("client-diverged client=x last_seq=5", T);
    // Long enough for a served client to have logged several results.
    wait_line(&two.join("y.log"), "20 0 1", T);
    assert_eq!(fs::read_to_string(&x_log).expect("x log"), logged);
    // Refused for good when its view is not ahead of this cluster's, else for now (a
    // server behind the client's view may be a replaced one): never served either way.
    if let Ok(Some(status)) = x.child.try_wait() {
        assert_eq!(status.code(), Some(1), "{}", tail(&x.stderr, 20));
    }
}
