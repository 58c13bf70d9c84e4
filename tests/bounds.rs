//! Bounds a peer can reach, with real processes: `--max-connections`, the hello deadline
//! and a client's output buffer. Each shows the documented behaviour while the other
//! clients' logs stay exact.

mod common;

use common::*;
use pbvote::proto::codec::{decode_frame, frame};
use pbvote::proto::limits::HELLO_DEADLINE_MS;
use pbvote::proto::{ClientId, Hello, HistoryDigest, Seq, ServerMsg, View};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn status_json(addr: &str) -> serde_json::Value {
    let out = pbvote(&["status", "--server", addr, "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// A client's hello on a fresh connection, and the one answer before the close.
fn client_hello_answer(addr: &str, id: &str) -> ServerMsg {
    answer(send_client_hello(addr, id))
}

fn send_client_hello(addr: &str, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let hello = Hello::Client {
        id: ClientId(id.to_string()),
        last_seq: Seq(0),
        view: View(0),
        digest: HistoryDigest::EMPTY,
    };
    s.write_all(&frame(&hello).expect("encode")).expect("write");
    s
}

fn answer(mut s: TcpStream) -> ServerMsg {
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((msg, _)) = decode_frame::<ServerMsg>(&buf).expect("a frame") {
            return msg;
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// At `--max-connections` a client is refused with the reason and the connection closed;
/// `status` still answers and counts it; the primary's respawned backup joins past the
/// limit; silent connections are closed after the hello deadline; the voting clients
/// never notice.
#[test]
fn max_connections_refuses_clients_but_never_the_peer_or_status() {
    let max = 12;
    let extra = ["--max-connections", "12", "--ballot-interval-ms", "100"];
    let mut c = Cluster::start(120, &extra);
    wait_line(&c.err, "view-change role=backup", T);
    wait_line(&c.err, "ballot-result seq=3 ", T);

    // Fill the primary up with connections that say nothing (the status asking counts).
    let open = status_json(&c.addr)["connections"]["open"]
        .as_u64()
        .expect("open") as usize;
    let mut idle: Vec<TcpStream> = (open - 1..max)
        .map(|_| TcpStream::connect(&c.addr).expect("connect"))
        .collect();
    match client_hello_answer(&c.addr, "one-too-many") {
        ServerMsg::Refused {
            reason, permanent, ..
        } => {
            assert!(reason.starts_with("max-connections"), "{reason}");
            assert!(!permanent);
        }
        other => panic!("not refused: {other:?}"),
    }
    wait_line(&c.err, "conn-rejected", T);
    let status = status_json(&c.addr);
    assert_eq!(status["connections"]["max"], max as u64);
    assert!(
        status["connections"]["rejected"].as_u64() >= Some(1),
        "{status}"
    );

    // The backup dies; its slot is taken before the new one dials: the new backup's
    // link comes in past the limit, and it joins.
    let backup = pid_of_line(&c.err, "view-change role=backup", T);
    signal(backup, libc::SIGKILL);
    wait_line(&c.err, &format!("backup-exited pid={backup}"), T);
    idle.push(TcpStream::connect(&c.addr).expect("connect"));
    wait_count(&c.err, "view-change role=backup", 2, T);
    let status = status_json(&c.addr);
    assert!(
        status["connections"]["open"].as_u64() > Some(max as u64),
        "the peer was not let in past the limit: {status}"
    );

    // Nobody said hello on the idle ones: closed after the deadline, room again.
    let closed = "reason=no hello within";
    let wait = Duration::from_millis(HELLO_DEADLINE_MS) + T;
    wait_count(&c.err, closed, idle.len(), wait);
    assert!(matches!(
        client_hello_answer(&c.addr, "later"),
        ServerMsg::Welcome { .. }
    ));
    drop(idle);
    c.finish_and_check();
}

/// Out of descriptors (EMFILE), accept backs off and retries on a timer: ballots go on
/// meanwhile, and once descriptors are free a client that waited in the backlog is
/// served, although no new connection came to make the listener ready again.
#[test]
fn out_of_descriptors_accept_backs_off_and_recovers() {
    let dir = test_dir();
    // The backup it spawns dials only after the test: no connection but ours comes in.
    let args = [
        "--ballots",
        "200",
        "--min-clients",
        "2",
        "--backup-start-delay-ms",
        "60000",
    ];
    let (primary, addr) = start_primary(dir.path(), &args);
    let clients = [("a", "yes"), ("b", "no")];
    let mut procs: Vec<Proc> = (clients.iter())
        .map(|(id, policy)| start_client(dir.path(), id, &addr, policy, 200))
        .collect();
    let err = dir.path().join("primary.err");
    wait_line(&err, "ballot-result seq=2 ", T);
    // Few descriptors left: the listener, epolls, stdio, two clients and a handful more.
    let nofile = |n: u32| {
        let limited = std::process::Command::new("prlimit")
            .args([
                &format!("--nofile={n}:"),
                "--pid",
                &primary.pid().to_string(),
            ])
            .status()
            .expect("run prlimit");
        assert!(limited.success());
    };
    nofile(24);
    let flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).expect("connect (the backlog takes it)"))
        .collect();
    wait_line(&err, "accept-failed", T);
    let waiting = send_client_hello(&addr, "waiting");
    let before = lines_with(&err, "ballot-result").len();
    wait_count(&err, "ballot-result", before + 5, T);
    let retries = lines_with(&err, "accept-failed").len();
    assert!(retries < 100, "{retries} failed accepts: a busy loop");
    // Descriptors to spare again, and nothing on the network to say so: the client in
    // the backlog is answered.
    nofile(1024);
    assert!(matches!(answer(waiting), ServerMsg::Welcome { .. }));
    drop(flood);
    for p in &mut procs {
        assert!(p.wait_exit(T).success());
    }
    drop(primary);
}

fn committed_now(addr: &str) -> u64 {
    status_json(addr)["committed"].as_u64().expect("committed")
}

/// The primary's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A member that votes but stops reading fills its connection's output buffer: past
/// `MAX_CLIENT_OUTBUF` the primary logs the limit and cuts it, the memory it held goes
/// back, `--absent-after-ms` takes it out of the membership, and the other member's log
/// is exact. (The figures it prints are in docs/PERFORMANCE.md; memory is not asserted.)
#[test]
fn a_member_that_stops_reading_is_cut_at_its_output_limit_and_the_others_go_on() {
    use pbvote::proto::limits::{MAX_CLIENT_OUTBUF, MAX_RESULTS_HELD, RESULTS_TRIM_STEP};
    use pbvote::proto::ClientMsg;
    let dir = test_dir();
    // Ballots without end: the test stops once the members went on well past the cut.
    let ballots = u64::MAX / 2;
    let args = [
        "--window",
        "1024",
        "--ballot-interval-ms",
        "0",
        "--min-clients",
        "3",
        "--absent-after-ms",
        "500",
        "--backup-start-delay-ms",
        "60000",
    ];
    let (primary, addr) = start_primary(dir.path(), &args);
    let err = dir.path().join("primary.err");
    // Two real members: with them the primary's lease holds without the greedy one.
    let a = start_client(dir.path(), "a", &addr, "yes", ballots);
    let b = start_client(dir.path(), "b", &addr, "no", ballots);

    // The greedy member: it accepts the view that adds it, and reads until asked to vote.
    let mut greedy = send_client_hello(&addr, "greedy");
    greedy.set_read_timeout(Some(T)).expect("timeout");
    // A small receive buffer: the kernel holds little of what it does not read, so the
    // primary's own buffer fills sooner.
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket we own, with a pointer to a local int and its size.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&greedy),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt SO_RCVBUF");
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    let view = loop {
        let msg = match decode_frame::<ServerMsg>(&buf).expect("a frame") {
            Some((msg, used)) => {
                buf.drain(..used);
                msg
            }
            None => {
                let n = greedy.read(&mut chunk).expect("read");
                assert!(n > 0, "closed before it was asked to vote");
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
        };
        match msg {
            ServerMsg::Propose { view, .. } => {
                let accept = ClientMsg::Accept {
                    view: view.number,
                    last_seq: Seq(0),
                    votes: Vec::new(),
                    tail: Vec::new(),
                    tail_base: HistoryDigest::EMPTY,
                    followed_members: None,
                    promised_members: None,
                };
                greedy
                    .write_all(&frame(&accept).expect("encode"))
                    .expect("write");
            }
            ServerMsg::VoteRequest { view, .. } => break view,
            _ => {}
        }
    };
    let baseline = rss_kib(primary.pid());

    // From now on it never reads: it votes yes ahead of what is committed, blind.
    let started = std::time::Instant::now();
    let mut peak = baseline;
    loop {
        assert!(started.elapsed() < 4 * T, "never cut");
        let committed = committed_now(&addr);
        let votes = ClientMsg::Votes {
            view,
            votes: (committed + 1..=committed + 2048)
                .map(|s| (Seq(s), true))
                .collect(),
        };
        peak = peak.max(rss_kib(primary.pid()));
        // Once cut, what it writes meets a closed connection.
        if greedy.write_all(&frame(&votes).expect("encode")).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let cut = wait_line(&err, "send-failed", T);
    assert!(
        cut.contains(&format!("over its limit of {MAX_CLIENT_OUTBUF}")),
        "{cut}"
    );
    let cut_after = started.elapsed();
    wait_line(&err, "client-removing client=greedy by=absent", T);
    let after_cut = rss_kib(primary.pid());
    // What the primary keeps whatever happens: the retained results, 16 bytes each.
    let history_kib =
        (committed_now(&addr).min((MAX_RESULTS_HELD + RESULTS_TRIM_STEP) as u64)) * 16 / 1024;
    eprintln!(
        "primary RSS: {baseline} KiB before the stall, {peak} KiB at most, {after_cut} KiB after the cut, of which up to {history_kib} KiB the retained results ({:.1} s of blind votes)",
        cut_after.as_secs_f64()
    );
    drop(greedy);

    // The other members go on, well past the cut. Their logs (cut where they were killed)
    // agree, are 1..=k each once, and every tally is their yes and no and, while the
    // greedy one was a member, its yes.
    let at_cut = committed_now(&addr);
    let went_on = std::time::Instant::now();
    while committed_now(&addr) < at_cut + 50_000 {
        assert!(
            went_on.elapsed() < T,
            "the members did not go on after the cut"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(a);
    drop(b);
    let log = |id: &str| {
        let text = std::fs::read_to_string(dir.path().join(format!("{id}.log"))).expect("log");
        pbvote::ballot_log::parse(&text).expect("the log parses").0
    };
    let (a, b) = (log("a"), log("b"));
    let both = a.len().min(b.len());
    assert!(
        both as u64 > at_cut,
        "logged {both}, committed {at_cut} at the cut"
    );
    assert!(a[..both] == b[..both], "a and b logged differently");
    for (i, line) in a.iter().chain(&b[both..]).enumerate() {
        assert_eq!(
            line.seq,
            Seq(i as u64 + 1),
            "out of order at line {}",
            i + 1
        );
        let (yes, no) = (line.tally.yes, line.tally.no);
        assert!(
            no == 1 && (1..=2).contains(&yes),
            "seq {}: {yes} {no}",
            line.seq
        );
    }
    drop(primary);
}
