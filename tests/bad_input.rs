//! G6: bad input on any port gets a log line naming the peer and the error and a closed
//! connection; the server and every other connection carry on, and no vote is lost.

mod common;

use common::*;
use pbvote::client::policy::Policy;
use pbvote::proto::codec::frame;
use pbvote::proto::{ClientId, ClientMsg, Hello, HistoryDigest, NodeId, PeerMsg, Seq, View};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

fn hello_client(id: &str) -> Vec<u8> {
    frame(&Hello::Client {
        id: ClientId(id.to_string()),
        last_seq: Seq(0),
        view: View(0),
        digest: HistoryDigest::EMPTY,
    })
    .expect("encode")
}

/// Sends `bytes`, optionally half-closes, and waits for the server to close on us. Returns
/// the local address the server saw.
fn send_and_expect_close(addr: &str, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let local = s.local_addr().expect("local addr").to_string();
    s.write_all(bytes).expect("write");
    if half_close {
        s.shutdown(Shutdown::Write).expect("shutdown");
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return local,
            Ok(_) => continue, // a Welcome or Refused before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return local,
            Err(e) => panic!("server did not close the connection from {local}: {e}"),
        }
    }
}

#[test]
fn bad_frames_close_only_their_connection_and_lose_no_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ballots = 40;
    let (mut primary, addr) = start_primary(dir.path(), &["--ballots", "40", "--min-clients", "2"]);
    let clients = [("good1", Policy::Yes), ("good2", Policy::No)];
    let mut procs: Vec<Proc> = clients
        .iter()
        .map(|(id, p)| start_client(dir.path(), id, &addr, &p.to_string(), ballots))
        .collect();
    primary.wait_line("ballot-result seq=2 ", Duration::from_secs(20));

    let mut truncated = hello_client("cut");
    truncated.truncate(truncated.len() - 3);
    let mut peer_on_client_link = hello_client("intruder");
    peer_on_client_link.extend(frame(&PeerMsg::Heartbeat { view: View(1) }).expect("encode"));
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "garbage",
            vec![0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb],
            false,
            "malformed Hello",
        ),
        ("truncated", truncated, true, "closed inside a frame"),
        (
            "oversized",
            vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
            false,
            "exceeds the maximum",
        ),
        // Within the frame limit of a peer link, but no Hello is this long: refused on
        // its length prefix, before the server holds any of it.
        (
            "oversized hello",
            vec![0, 0, 0x13, 0x88, 1, 2, 3],
            false,
            "exceeds the maximum of 4096",
        ),
        // CBOR for the integer 42: valid CBOR, not a Hello.
        (
            "wrong shape",
            vec![0, 0, 0, 2, 0x18, 42],
            false,
            "malformed Hello",
        ),
        (
            "client message as hello",
            frame(&ClientMsg::Votes {
                view: View(1),
                votes: vec![(Seq(1), true)],
            })
            .expect("encode"),
            false,
            "expected Hello but got a ClientMsg",
        ),
        (
            "over-long client id",
            hello_client(&"x".repeat(65)),
            false,
            "reason=client refused",
        ),
    ];
    for (name, bytes, half_close, error) in cases {
        let local = send_and_expect_close(&addr, &bytes, half_close);
        let line = primary.wait_line(&format!("peer={local}"), Duration::from_secs(10));
        let err = std::fs::read_to_string(&primary.stderr).unwrap_or_default();
        let logged = err
            .lines()
            .any(|l| l.contains(&format!("peer={local}")) && l.contains(error));
        assert!(
            logged,
            "case {name}: no log line naming {local} and {error:?}; saw {line}"
        );
    }

    for p in &mut procs {
        assert!(p.wait_exit(Duration::from_secs(60)).success(), "{}", p.name);
    }
    assert_eq!(check_logs(dir.path(), &clients, ballots), vec![]);

    // Last, because a client that registers joins the electorate of every later ballot
    // (until an operator deregisters it), and this one will never vote.
    let local = send_and_expect_close(&addr, &peer_on_client_link, false);
    let line = primary.wait_line(&format!("bad-frame peer={local}"), Duration::from_secs(10));
    assert!(
        line.contains("expected ClientMsg but got a PeerMsg"),
        "{line}"
    );
    // The server is still serving.
    let out = std::process::Command::new(BIN)
        .args(["status", "--server", &addr])
        .output()
        .expect("status");
    assert!(out.status.success());
}

#[test]
fn client_message_on_the_peer_link_closes_that_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, addr) = start_primary(dir.path(), &["--no-spawn"]);
    let mut s = TcpStream::connect(&addr).expect("connect");
    let local = s.local_addr().expect("local").to_string();
    let mut bytes = frame(&Hello::Peer {
        node: NodeId(7),
        listen: "127.0.0.1:9".parse().expect("addr"),
        view: View(0),
    })
    .expect("encode");
    bytes.extend(
        frame(&ClientMsg::Votes {
            view: View(1),
            votes: vec![(Seq(1), true)],
        })
        .expect("encode"),
    );
    s.write_all(&bytes).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink); // ends when the server closes
    let line = primary.wait_line(&format!("bad-frame peer={local}"), Duration::from_secs(10));
    assert!(
        line.contains("expected PeerMsg but got a ClientMsg"),
        "{line}"
    );
    let out = std::process::Command::new(BIN)
        .args(["status", "--server", &addr])
        .output()
        .expect("status");
    assert!(out.status.success(), "server died after a bad peer frame");
}
