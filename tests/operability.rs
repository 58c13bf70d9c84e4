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
