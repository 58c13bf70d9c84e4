//! Bounds a peer can reach, with real processes: `--max-connections` and the hello
//! deadline. Each shows the documented behaviour while the clients' logs stay exact.

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
