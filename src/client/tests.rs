//! The client core driven by hand.

use super::*;
use crate::proto::{Fingerprint, Tally};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// A view of servers 1 and 2, one of them primary.
fn view(number: u64, primary: u16) -> ViewInfo {
    ViewInfo {
        number: View(number),
        primary: addr(primary),
        backup: Some(addr(3 - primary)),
    }
}

/// A client linked to servers on ports 1 and 2 (connections 1 and 2).
fn linked_client(now: Instant) -> Client {
    client_from(Seq(0), &Promised::default(), now)
}

/// A client started with a log ending at `logged` and `promise`, linked to servers 1 and 2.
fn client_from(logged: Seq, promise: &Promised, now: Instant) -> Client {
    let cfg = ClientConfig {
        id: ClientId("c".into()),
        servers: vec![addr(1), addr(2)],
        policy: Policy::Yes,
        until: None,
        redial: Duration::from_millis(100),
    };
    let log = LogEnd {
        last: logged,
        ..LogEnd::default()
    };
    let mut client = Client::new(cfg, log, promise, now);
    client.handle_timeout(now);
    for port in 1..=2 {
        client.handle_connected(conn(port), addr(port), now);
    }
    while client.poll_output().is_some() {}
    client
}

fn conn(slot: u16) -> ConnId {
    ConnId {
        slot: u32::from(slot),
        gen: 0,
    }
}

fn propose(number: u64, primary: u16, base: u64, lease_ms: u64) -> ServerMsg {
    ServerMsg::Propose {
        view: view(number, primary),
        base: View(base),
        recovering: false,
        node: NodeId(u64::from(primary)),
        lease_ms,
        members: Fingerprint::default(),
        member: true,
    }
}

/// The `retry_after_ms` of the `Reject` the client sent last, if it sent one.
fn retry_after(client: &mut Client) -> Option<u64> {
    let mut retry = None;
    while let Some(out) = client.poll_output() {
        if let ClientOutput::Send(
            _,
            ClientMsg::Reject {
                retry_after_ms: Some(ms),
                ..
            },
        ) = out
        {
            retry = Some(ms);
        }
    }
    retry
}

/// A takeover by a server with other timing flags: the client honours the lease the new
/// holder counts on, not the one it learned first (it kept the first for ever).
#[test]
fn the_lease_length_follows_its_holder() {
    let t0 = Instant::now();
    let mut client = linked_client(t0);
    let welcome = ServerMsg::Welcome {
        view: view(1, 1),
        lease_ms: 5_000,
        members: Fingerprint::default(),
        member: true,
    };
    client.handle_msg(conn(1), welcome, t0);
    // Server 2 takes over once server 1's lease has run out here; it counts on 1 s.
    let t1 = t0 + Duration::from_secs(6);
    client.handle_msg(conn(2), propose(2, 2, 1, 1_000), t1);
    while client.poll_output().is_some() {}
    // Server 1 asks again at once: it must wait out server 2's lease, 1 s and the margin.
    let t2 = t1 + Duration::from_millis(10);
    client.handle_msg(conn(1), propose(3, 1, 1, 1_000), t2);
    let wait = retry_after(&mut client).expect("rejected for the lease");
    let honoured = honoured_lease(1_000).as_millis() as u64;
    assert!(wait <= honoured && wait > honoured - 20, "waits {wait} ms");
    // A renewal says how long it lasts: a longer one is honoured from then on.
    let lease = ServerMsg::Lease {
        view: View(2),
        round: 1,
        lease_ms: 3_000,
    };
    client.handle_msg(
        conn(2),
        ServerMsg::NewView {
            view: view(2, 2),
            lease_ms: 1_000,
            members: Fingerprint::default(),
            member: true,
        },
        t2,
    );
    client.handle_msg(conn(2), lease, t2);
    client.handle_msg(conn(1), propose(4, 1, 2, 1_000), t2);
    let wait = retry_after(&mut client).expect("rejected for the lease");
    assert!(wait > 3_000, "waits {wait} ms");
}

/// The client's side of a lease outlasts the server's by the drift margin.
#[test]
fn a_client_honours_a_lease_longer_than_the_server_counts_it() {
    assert_eq!(honoured_lease(1_280), Duration::from_millis(1_290));
    assert!(honoured_lease(5_000) > Duration::from_millis(5_000));
}

/// A client that restarted with a promise, linked to servers 1 and 2.
fn restarted_client(promised: u64, now: Instant) -> Client {
    let promise = Promised {
        view: View(promised),
        servers: vec![addr(1), addr(2)],
        ..Promised::default()
    };
    client_from(Seq(3), &promise, now)
}

fn accepted(client: &mut Client) -> bool {
    let mut accepted = false;
    while let Some(out) = client.poll_output() {
        accepted |= matches!(out, ClientOutput::Send(_, ClientMsg::Accept { .. }));
    }
    accepted
}

/// Issue 12, execution 4: a restarted client adopts no view older than its own promise
/// (a stale, cut-off backup offers its old view), so that backup cannot collect it as a
/// witness for a takeover built on old state.
#[test]
fn a_restarted_client_adopts_no_view_older_than_its_promise() {
    let t0 = Instant::now();
    let mut client = restarted_client(7, t0);
    // Server 2, a backup of view 5 that was cut off, offers its view and then proposes.
    let stale = ViewInfo {
        number: View(5),
        primary: addr(1),
        backup: Some(addr(2)),
    };
    client.handle_msg(
        conn(2),
        ServerMsg::Welcome {
            view: stale,
            lease_ms: 1_000,
            members: Fingerprint::default(),
            member: true,
        },
        t0,
    );
    assert_eq!(client.view(), None, "adopted a view below its promise");
    let t1 = t0 + Duration::from_secs(5);
    client.handle_msg(conn(2), propose(8, 2, 5, 1_000), t1);
    assert!(
        !accepted(&mut client),
        "accepted a takeover built on view 5"
    );
    // A view above its promise it follows.
    let current = view(9, 1);
    client.handle_msg(
        conn(1),
        ServerMsg::NewView {
            view: current,
            lease_ms: 1_000,
            members: Fingerprint::default(),
            member: true,
        },
        t1,
    );
    assert_eq!(client.view(), Some(current));
}

/// Issue 12, execution 4: a client that learned of its view only from a server that is not
/// that view's primary (its backup's `Welcome`) has not heard from the primary, and must
/// not take that backup's takeover at once: the primary may be alive and counting on the
/// client's lease. It waits one lease from when it learned the view.
#[test]
fn a_view_learned_from_its_backup_gives_that_backup_no_lease_free_accept() {
    let t0 = Instant::now();
    let mut client = linked_client(t0);
    client.handle_msg(
        conn(2),
        ServerMsg::Welcome {
            view: view(3, 1),
            lease_ms: 1_000,
            members: Fingerprint::default(),
            member: true,
        },
        t0,
    );
    let t1 = t0 + Duration::from_millis(10);
    client.handle_msg(conn(2), propose(4, 2, 3, 1_000), t1);
    assert!(
        !accepted(&mut client),
        "took the backup's takeover with no lease waited"
    );
    let t2 = t0 + honoured_lease(1_000) + Duration::from_millis(1);
    client.handle_msg(conn(2), propose(5, 2, 3, 1_000), t2);
    assert!(
        accepted(&mut client),
        "the lease ran out: the takeover may go on"
    );
}

/// Found by the `client_core` fuzz target: `Results` numbered up to the last seq there is
/// overflowed the seq arithmetic (a panic). What lies past `u64::MAX` is dropped.
#[test]
fn results_past_the_last_seq_are_dropped_not_a_panic() {
    let now = Instant::now();
    let mut client = linked_client(now);
    let welcome = ServerMsg::Welcome {
        view: view(1, 1),
        lease_ms: 1000,
        members: Fingerprint::default(),
        member: true,
    };
    client.handle_msg(conn(1), welcome, now);
    let tally = Tally { yes: 1, no: 0 };
    let results = ServerMsg::Results {
        view: View(1),
        first: Seq(u64::MAX),
        tallies: vec![tally, tally],
    };
    client.handle_msg(conn(1), results, now);
    assert_eq!(client.last_logged(), Seq(0));
    assert_eq!(client.invariants(), Ok(()));
}

/// A permanent refusal counts only from a server at least as new as what the client
/// knows: a replaced primary, not yet aware of its successor, must not end a client the
/// successor serves (it is told `Stale` instead).
#[test]
fn a_permanent_refusal_from_a_replaced_server_is_not_final() {
    let now = Instant::now();
    let mut client = linked_client(now);
    let new_view = ServerMsg::NewView {
        view: view(5, 2),
        lease_ms: 1000,
        members: Fingerprint::default(),
        member: true,
    };
    client.handle_msg(conn(2), new_view, now);
    while client.poll_output().is_some() {}
    let refused = |view: u64| ServerMsg::Refused {
        view: View(view),
        reason: "client-ahead: …".into(),
        permanent: true,
    };
    client.handle_msg(conn(1), refused(3), now);
    assert_eq!(client.refused(), None);
    let told_stale = std::iter::from_fn(|| client.poll_output())
        .any(|o| matches!(o, ClientOutput::Send(c, ClientMsg::Stale { .. }) if c == conn(1)));
    assert!(told_stale);
    client.handle_msg(conn(2), refused(5), now);
    assert_eq!(client.refused(), Some("client-ahead: …"));
}

/// Restarted with a promise to server 1's proposal 5, and a record that it followed view
/// 4: it follows no view. Server 2's higher proposal built on view 4 it refuses (view 5
/// may have been installed and told results it never saw); one built on view 5 it
/// accepts, once it has waited out the lease server 1 may still count on. Before, a
/// client that followed no view answered no proposal at all.
#[test]
fn a_restarted_client_answers_a_new_proposal_after_a_lease() {
    let t0 = Instant::now();
    let record = |view| MemberRecord {
        view: View(view),
        members: Fingerprint::default(),
        member: true,
    };
    let promise = Promised {
        view: View(5),
        servers: vec![addr(1), addr(2)],
        proposer: Some(NodeId(1)),
        followed: Some(record(4)),
        accepted: Some(record(5)),
    };
    let mut client = client_from(Seq(3), &promise, t0);
    assert!(client.view().is_none());
    let accepted = |client: &mut Client| {
        let mut accepted = false;
        while let Some(out) = client.poll_output() {
            accepted |= matches!(out, ClientOutput::Send(_, ClientMsg::Accept { .. }));
        }
        accepted
    };
    client.handle_msg(conn(2), propose(6, 2, 4, 1_000), t0);
    assert!(
        !accepted(&mut client),
        "a proposal on a view older than its promise"
    );
    client.handle_msg(conn(2), propose(7, 2, 5, 1_000), t0);
    let wait = retry_after(&mut client).expect("waits out the lease it may have given");
    assert!(
        wait <= honoured_lease(1_000).as_millis() as u64 + 1,
        "{wait}"
    );
    let later = t0 + Duration::from_millis(wait);
    client.handle_msg(conn(2), propose(7, 2, 5, 1_000), later);
    assert!(accepted(&mut client));
}

/// Restarted with a promise to server 1's proposal 5 (it followed view 4), it follows no
/// view. Server 1 itself proposing anew on view 4 (the joiner it waited for went away)
/// never installed 5, which only it could have: accepted at once. Refused, a membership
/// change stalled for good.
#[test]
fn a_restarted_client_accepts_its_proposer_proposing_anew() {
    let t0 = Instant::now();
    let promise = Promised {
        view: View(5),
        servers: vec![addr(1), addr(2)],
        proposer: Some(NodeId(1)),
        followed: Some(MemberRecord {
            view: View(4),
            members: Fingerprint::default(),
            member: true,
        }),
        accepted: None,
    };
    let mut client = client_from(Seq(3), &promise, t0);
    client.handle_msg(conn(1), propose(6, 1, 4, 1_000), t0);
    let mut accepted = false;
    while let Some(out) = client.poll_output() {
        accepted |= matches!(
            out,
            ClientOutput::Send(_, ClientMsg::Accept { view: View(6), .. })
        );
    }
    assert!(accepted);
}

/// While another server answers, a server that keeps failing is redialed ever less often
/// (one redial interval, then twice and four times it, no more; a connection that
/// lasted an interval starts over), and a view that names it has it dialed at once. Once
/// no server answers, every one is redialed each interval again (a cold restart counts
/// on it).
#[test]
fn a_failing_server_is_redialed_with_backoff_while_another_answers() {
    /// Lets server 1's next `n` dials fail; the waits before each, and the time after.
    fn fail_dials(client: &mut Client, n: usize, mut now: Instant) -> (Vec<u128>, Instant) {
        let mut waits = Vec::new();
        for _ in 0..n {
            let at = client.poll_timeout().expect("a redial is due");
            waits.push((at - now).as_millis());
            now = at;
            client.handle_timeout(now);
            let dialed = std::iter::from_fn(|| client.poll_output())
                .any(|o| matches!(o, ClientOutput::Dial(a) if a == addr(1)));
            assert!(dialed, "no redial after {waits:?}");
            client.handle_dial_failed(addr(1), now);
        }
        (waits, now)
    }
    let t0 = Instant::now();
    let redial = Duration::from_millis(100);
    let mut client = linked_client(t0);
    // Up for an interval, then lost: redialed one interval later.
    client.handle_closed(conn(1), t0 + redial);
    let (waits, now) = fail_dials(&mut client, 5, t0 + redial);
    assert_eq!(waits, [100, 100, 200, 400, 400]);
    assert_eq!((client.poll_timeout().expect("due") - now).as_millis(), 400);

    // Server 1 is the primary of a newer view, heard of from server 2: dialed now.
    let new_view = ServerMsg::NewView {
        view: view(2, 1),
        lease_ms: 1_000,
        members: Fingerprint::default(),
        member: true,
    };
    client.handle_msg(conn(2), new_view, now);
    let dialed = std::iter::from_fn(|| client.poll_output())
        .any(|o| matches!(o, ClientOutput::Dial(a) if a == addr(1)));
    assert!(
        dialed,
        "a view naming the server did not have it dialed at once"
    );

    // Backed off, then server 2 is lost too: server 1 is due within an interval, and
    // stays at one interval.
    let mut client = linked_client(t0);
    client.handle_closed(conn(1), t0 + redial);
    let (_, now) = fail_dials(&mut client, 4, t0 + redial);
    client.handle_closed(conn(2), now);
    let (waits, _) = fail_dials(&mut client, 3, now);
    assert_eq!(waits, [100, 100, 100]);
}
