//! What operators drive from a shell: completions, the live status view, the capture
//! decoder, systemd's readiness protocol.

mod common;

use common::*;

/// `pbvote completions SHELL` prints a script the shell takes, naming every command; a
/// shell it does not know is a usage error.
#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _pbvote"),
        ("zsh", "#compdef pbvote"),
        ("fish", "complete -c pbvote"),
    ] {
        let out = pbvote(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("utf-8");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for command in ["server", "client", "status", "remove-client", "check-logs"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
    // Bash itself loads it and registers the completion.
    let out = pbvote(&["completions", "bash"]);
    let loaded = std::process::Command::new("bash")
        .args(["--norc", "-c", "source /dev/stdin && complete -p pbvote"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut bash| {
            use std::io::Write;
            bash.stdin.take().expect("stdin").write_all(&out.stdout)?;
            bash.wait_with_output()
        })
        .expect("run bash");
    assert!(loaded.status.success(), "{loaded:?}");
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("pbvote"));

    let bad = pbvote(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

const T: std::time::Duration = std::time::Duration::from_secs(30);

/// `status --watch` prints each server every interval, says when the primary dies (its
/// address stops answering, or another process answers there: the new primary spawns its
/// backup on the address it frees), and goes on with the backup that took over.
#[test]
fn status_watch_follows_the_cluster_across_a_failover() {
    let mut c = Cluster::start(400, &["--ballot-interval-ms", "20"]);
    let joined = wait_line(&c.err, "view-change role=backup", T);
    let backup = joined
        .split("b=")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the backup's address")
        .to_string();
    let args = [
        "status",
        "--server",
        &c.addr,
        "--watch",
        "--interval-ms",
        "100",
    ];
    let (mut watch, out) = Proc::start_keeping_stdout(c.dir.path(), "watch", &args);
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (mut json_watch, json_out) = Proc::start_keeping_stdout(c.dir.path(), "json", &json_args);
    // Both servers, as the primary's answer names its backup; ballots run.
    wait_line(&out, &format!("{} primary", c.addr), T);
    wait_line(&out, &format!("{backup} backup"), T);
    wait_line(&json_out, r#""role":"backup""#, T);

    signal(c.primary.pid(), libc::SIGKILL);
    wait_line(&out, &format!("{backup} primary"), T);
    let deadline = std::time::Instant::now() + T;
    let said = loop {
        let text = std::fs::read_to_string(&out).expect("watch output");
        let said = text.lines().find(|l| {
            l.contains(&format!("{} DOWN", c.addr)) || l.contains(&format!("{} REPLACED", c.addr))
        });
        if let Some(line) = said {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the death is not told:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(said.contains("connect") || said.contains("was="), "{said}");
    // The JSON lines parse, one object each, and say the same.
    wait_line(
        &json_out,
        &format!(r#""server":"{backup}","role":"primary""#),
        T,
    );
    json_watch.kill_group();
    let json = std::fs::read_to_string(&json_out).expect("json output");
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "up" && e["server"] == backup.as_str() && e["role"] == "primary"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "up" && e["ballots_per_s"].as_f64() > Some(0.0)));
    watch.kill_group();
    c.finish_and_check();
}

/// `tcpdump -i lo` on the given ports, in its own process group: stopped with SIGINT (so
/// it writes out what it buffered) and reaped, or killed if the test fails first.
struct Capture {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl Capture {
    /// `None` (with a line saying why) when not root: capturing needs it.
    fn start(dir: &std::path::Path, ports: &[u16]) -> Option<Capture> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: capturing with tcpdump needs root");
            return None;
        }
        use std::os::unix::process::CommandExt;
        let path = dir.join("cap.pcap");
        let filter: Vec<String> = ports.iter().map(|p| format!("tcp port {p}")).collect();
        let err = std::fs::File::create(dir.join("tcpdump.err")).expect("tcpdump.err");
        let child = std::process::Command::new("tcpdump")
            // A larger kernel buffer (KiB) than the default 2 MiB: the test runs beside
            // others on two cores, and a dropped packet is a hole in a stream.
            .args(["-i", "lo", "--immediate-mode", "-U", "-B", "16384", "-w"])
            .arg(&path)
            .arg(filter.join(" or "))
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("tcpdump (apt-get install tcpdump; .ci/run does)");
        wait_line(&dir.join("tcpdump.err"), "listening on lo", T);
        Some(Capture { child, path })
    }

    /// Sends a frame of junk holding `marker` to `addr`, waits until the capture file
    /// holds it (so everything before it is written too), and stops the capture.
    fn stop_after_marker(mut self, addr: &str, marker: &[u8; 4]) -> std::path::PathBuf {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(&[0, 0, 0, 4]).expect("write");
        s.write_all(marker).expect("write");
        let deadline = std::time::Instant::now() + T;
        loop {
            let bytes = std::fs::read(&self.path).unwrap_or_default();
            if bytes.windows(4).any(|w| w == marker) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the marker was never captured"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        signal(self.child.id() as i32, libc::SIGINT);
        let status = self.child.wait().expect("wait tcpdump");
        assert!(status.success(), "tcpdump: {status}");
        self.path.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message kinds a run with a failover, a status request and leaving clients shows.
const KINDS_OF_A_FAILOVER: [&str; 20] = [
    "Welcome",
    "Lease",
    "LeaseAck",
    "VoteRequest",
    "Votes",
    "Results",
    "Propose",
    "Accept",
    "NewView",
    "Snapshot",
    "Install",
    "InstallAck",
    "Heartbeat",
    "Open",
    "Commit",
    "CommitAck",
    "StatusReply",
    "Leave",
    "Left",
    "Forward",
];

/// A real run on probed ports, captured: ballots, a failover (kill, takeover, respawn,
/// join), a status request, a hello written in two pieces, and garbage. `pbvote decode`
/// names every message kind of the run, puts the split hello back together, reports the
/// garbage as undecodable, and goes on; the Wireshark dissector names every kind too.
#[test]
fn a_captured_failover_is_read_by_decode_and_by_the_dissector() {
    use pbvote::client::policy::Policy;
    use std::io::Write;
    let dir = test_dir();
    let (p1, p2) = (probe_port(), probe_port());
    let Some(capture) = Capture::start(dir.path(), &[p1, p2]) else {
        return;
    };
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let mut primary = Proc::start(
        dir.path(),
        "primary",
        &[
            "server",
            "--role",
            "primary",
            "--listen",
            &a1,
            "--backup-listen",
            &a2,
            "--heartbeat-ms",
            "50",
            "--backup-start-delay-ms",
            "200",
            "--ballot-interval-ms",
            "20",
            "--min-clients",
            "3",
            "--ballots",
            "60",
        ],
    );
    let servers = format!("{a1},{a2}");
    let clients = [("y1", Policy::Yes), ("y2", Policy::Yes), ("n1", Policy::No)];
    let mut procs: Vec<Proc> = (clients.iter())
        .map(|(id, p)| start_client(dir.path(), id, &servers, &p.to_string(), 60))
        .collect();
    let err = dir.path().join("primary.err");
    wait_line(&err, "view-change role=backup", T);
    wait_line(&err, "ballot-result seq=5 ", T);
    assert!(pbvote(&["status", "--server", &a1]).status.success());
    // A hello in two writes, 50 ms apart: two segments.
    let mut split = std::net::TcpStream::connect(&a1).expect("connect");
    split.set_nodelay(true).expect("nodelay");
    let split_port = split.local_addr().expect("local addr").port();
    let hello = pbvote::proto::codec::frame(&pbvote::proto::Hello::Status).expect("encode");
    split.write_all(&hello[..3]).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(50));
    split.write_all(&hello[3..]).expect("write");
    // Garbage: a length prefix with a body that is no message.
    let mut garbage = std::net::TcpStream::connect(&a1).expect("connect");
    garbage
        .write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .expect("write");
    wait_line(&err, "bad-frame", T);

    signal(primary.pid(), libc::SIGKILL);
    wait_line(&err, "took_over=true", T);
    wait_count(&err, "view-change role=backup", 2, T);
    finish_and_check(dir.path(), &mut procs, &clients, 60);
    drop(split);
    drop(garbage);
    let cap = capture.stop_after_marker(&a2, b"MARK");
    primary.kill_group();

    let out = pbvote(&[
        "decode",
        cap.to_str().expect("path"),
        "--port",
        &p1.to_string(),
        "--port",
        &p2.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // The message: the sixth field, up to its fields.
    let kinds: std::collections::BTreeSet<&str> = (text.lines())
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|m| m.split(['{', '(']).next().unwrap_or(m))
        .collect();
    let hellos = ["Hello::Client", "Hello::Peer", "Hello::Status"];
    for kind in KINDS_OF_A_FAILOVER.iter().chain(&hellos) {
        assert!(
            kinds.contains(kind),
            "no {kind} in the decoded capture: {kinds:?}"
        );
    }
    let split_from = format!("127.0.0.1:{split_port} -> {a1} status Hello::Status");
    let split_lines: Vec<&str> = (text.lines())
        .filter(|l| l.contains(&format!("127.0.0.1:{split_port} ")))
        .collect();
    assert!(
        text.contains(&split_from),
        "the hello written in two pieces: not whole; its lines {split_lines:?}; tcpdump said {:?}",
        std::fs::read_to_string(dir.path().join("tcpdump.err")).unwrap_or_default()
    );
    assert!(
        text.contains("UNDECODABLE frame of 8 bytes"),
        "garbage not reported"
    );
    // The JSON form: one object per frame, with the message under its kind.
    let json = pbvote(&[
        "decode",
        cap.to_str().expect("path"),
        "--json",
        "--port",
        &p1.to_string(),
    ]);
    assert!(json.status.success());
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert!(
        first["frame"].is_object() && first["src"].is_string(),
        "{first}"
    );
    dissect(&cap);
}

/// Datagrams on `socket` until `done` holds of what came, or the test's bound.
fn notifications(
    socket: &std::os::unix::net::UnixDatagram,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + T;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        assert!(std::time::Instant::now() < deadline, "only {got:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

/// Under systemd (`Type=notify`): `READY=1` once the primary serves, `STATUS=` with its
/// role and view as they change, `WATCHDOG=1` at half of `WATCHDOG_USEC` from the loop,
/// `STOPPING=1` on SIGTERM. The backup it spawns says nothing on its socket. An abstract
/// `@name` address works too.
#[test]
fn systemd_notify_readiness_status_and_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = test_dir();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let env = [
        ("NOTIFY_SOCKET", path.to_str().expect("utf-8")),
        ("WATCHDOG_USEC", "200000"),
    ];
    let args = [
        "server",
        "--role",
        "primary",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-ms",
        "50",
        "--backup-start-delay-ms",
        "100",
        "--min-clients",
        "1",
    ];
    let mut primary = Proc::start_with_env(dir.path(), "primary", &args, &env);
    let addr = listen_addr(&mut primary);
    let got = notifications(&socket, |g| {
        g.iter()
            .any(|m| m.starts_with("READY=1\nSTATUS=primary in view 1"))
            && g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    // A client joins, and the backup: each is a new view, and a new STATUS.
    let mut client = start_client(dir.path(), "c", &addr, "yes", 1_000_000);
    let got = [
        got,
        notifications(&socket, |g| {
            g.iter()
                .any(|m| m.starts_with("STATUS=primary") && m.contains(",b=127.0.0.1:"))
        }),
    ]
    .concat();
    assert!(
        got.iter()
            .all(|m| !m.contains("STATUS=backup") && !m.contains("STATUS=joining")),
        "the spawned backup wrote to its parent's socket: {got:?}"
    );
    signal(primary.pid(), libc::SIGTERM);
    notifications(&socket, |g| g.iter().any(|m| m == "STOPPING=1"));
    client.kill_group();
    primary.kill_group();

    // An abstract address.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("pbvote-test-{}", std::process::id());
    let abstract_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let socket = UnixDatagram::bind_addr(&abstract_addr).expect("bind abstract");
    let at = format!("@{name}");
    let args = [
        "server",
        "--role",
        "primary",
        "--listen",
        "127.0.0.1:0",
        "--no-spawn",
    ];
    let mut lone = Proc::start_with_env(dir.path(), "lone", &args, &[("NOTIFY_SOCKET", &at)]);
    notifications(&socket, |g| g.iter().any(|m| m.starts_with("READY=1")));
    lone.kill_group();
}

/// `tshark` with contrib/wireshark/pbvote.lua names every message kind of the capture,
/// knows each link's kind from its hello, and filters on `pbvote.msg`.
fn dissect(cap: &std::path::Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/wireshark/pbvote.lua");
    let tshark = |args: &[&str]| -> String {
        let out = std::process::Command::new("tshark")
            .args(["-X", &format!("lua_script:{script}"), "-r"])
            .arg(cap)
            .args(args)
            .output()
            .expect("tshark (apt-get install tshark; .ci/run does)");
        assert!(out.status.success(), "tshark: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let fields = tshark(&[
        "-Y",
        "pbvote",
        "-T",
        "fields",
        "-e",
        "pbvote.msg",
        "-e",
        "pbvote.link",
    ]);
    let mut names = std::collections::BTreeSet::new();
    let mut links = std::collections::BTreeSet::new();
    for line in fields.lines() {
        let mut columns = line.split('\t');
        names.extend(columns.next().unwrap_or("").split(',').map(str::to_string));
        links.extend(columns.next().unwrap_or("").split(',').map(str::to_string));
    }
    for kind in KINDS_OF_A_FAILOVER.iter().chain(&["Hello"]) {
        assert!(
            names.contains(*kind),
            "the dissector shows no {kind}: {names:?}"
        );
    }
    for link in ["client", "peer", "status"] {
        assert!(links.contains(link), "no {link} link: {links:?}");
    }
    let commits = tshark(&["-Y", "pbvote.msg == \"Commit\""]);
    assert!(commits.lines().count() > 0 && commits.contains("Commit"));
}
