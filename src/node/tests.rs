//! The node driven by hand, for behaviour that needs more ballots than a simulation runs.

use super::*;
use crate::proto::limits::{CATCHUP_BURST, MAX_RESULTS_HELD, RESULTS_TRIM_STEP};
use crate::proto::{
    ClientId, ClientMsg, Fingerprint, Hello, HistoryDigest, MemberRecord, NodeId, PeerMsg, Role,
    Seq, ServerMsg, Snapshot, View, ViewInfo,
};
use std::net::SocketAddr;
use std::time::Duration;

fn conn(slot: u32) -> ConnId {
    ConnId { slot, gen: 0 }
}

/// A primary started one peer timeout before `now`: ballot 1 may open at once.
fn primary(now: Instant) -> Node {
    let started = now
        .checked_sub(Duration::from_secs(5))
        .expect("a clock 5 s past its epoch");
    Node::new(
        NodeConfig {
            node: NodeId(1),
            listen: "127.0.0.1:7000".parse().expect("addr"),
            start: StartRole::Primary,
            heartbeat: Duration::from_secs(1),
            miss_limit: 5,
            backup_start_delay: Duration::from_secs(30),
            ballot_interval: Duration::ZERO,
            ballots: None,
            min_clients: 1,
            window: 64,
            spawn_backup: false,
            absent_after: None,
        },
        started,
    )
}

/// Answers what the node sent the one voting client on `voter`, and returns the results
/// any connection got, as `(conn, first seq, count)`, and the connections it asked to hear
/// of once drained.
fn step(node: &mut Node, voter: ConnId, now: Instant) -> (Vec<(ConnId, u64, usize)>, Vec<ConnId>) {
    let (mut results, mut drains) = (Vec::new(), Vec::new());
    let mut replies = Vec::new();
    while let Some(out) = node.poll_output() {
        let sent: Vec<(ConnId, ServerMsg)> = match out {
            Output::ToClient(c, msg) => vec![(c, msg)],
            Output::ToClients(cs, msg) => cs.into_iter().map(|c| (c, msg.clone())).collect(),
            Output::WhenDrained(c) => {
                drains.push(c);
                Vec::new()
            }
            _ => Vec::new(),
        };
        for (c, msg) in sent {
            match msg {
                ServerMsg::Propose { view, .. } if c == voter => replies.push(ClientMsg::Accept {
                    view: view.number,
                    last_seq: Seq(0),
                    votes: Vec::new(),
                    tail: Vec::new(),
                    tail_base: HistoryDigest::EMPTY,
                    followed_members: None,
                    promised_members: None,
                }),
                ServerMsg::Lease { view, round, .. } if c == voter => {
                    replies.push(ClientMsg::LeaseAck {
                        view,
                        round,
                        logged: Seq(0),
                    })
                }
                ServerMsg::VoteRequest { view, first, count } if c == voter => {
                    replies.push(ClientMsg::Votes {
                        view,
                        votes: (first.0..first.0 + u64::from(count))
                            .map(|s| (Seq(s), true))
                            .collect(),
                    })
                }
                ServerMsg::Results { first, tallies, .. } => {
                    results.push((c, first.0, tallies.len()))
                }
                _ => {}
            }
        }
    }
    for reply in replies {
        node.handle_client_msg(voter, reply, now);
    }
    (results, drains)
}

/// The history a lone voter that always says yes makes: every result `1 0`.
fn lone_yes_history(len: u64) -> HistoryDigest {
    let tallies = std::iter::repeat_n(Tally { yes: 1, no: 0 }, len as usize);
    HistoryDigest::EMPTY.over(Seq(1), tallies)
}

/// A client whose log is `last_seq` results of [`lone_yes_history`] says hello.
fn hello(node: &mut Node, c: ConnId, id: &str, last_seq: u64, now: Instant) {
    node.handle_hello(
        c,
        Hello::Client {
            id: ClientId(id.into()),
            last_seq: Seq(last_seq),
            view: View(0),
            digest: lone_yes_history(last_seq),
        },
        now,
    );
}

/// A primary whose one client, on connection 1, has voted until `target` results are
/// final.
fn voting_primary(t0: Instant, target: u64) -> (Node, ConnId) {
    let mut node = primary(t0);
    let voter = conn(1);
    hello(&mut node, voter, "voter", 0, t0);
    vote_until(&mut node, voter, t0, target);
    (node, voter)
}

/// Runs ballots, the one client on `voter` voting, until `target` results are final.
fn vote_until(node: &mut Node, voter: ConnId, t0: Instant, target: u64) {
    let mut turns = 0u64;
    while node.committed().0 < target {
        // Time moves a little each turn: leases stay live, timers stay quiet.
        let now = t0 + Duration::from_micros(turns / 64);
        node.handle_timeout(now);
        step(node, voter, now);
        turns += 1;
        assert!(
            turns < 10 * target + 100,
            "ballots stopped at {}",
            node.committed()
        );
    }
}

#[test]
fn a_client_far_behind_is_caught_up_a_burst_at_a_time_and_the_history_stays_bounded() {
    let t0 = Instant::now();
    let target = (MAX_RESULTS_HELD + RESULTS_TRIM_STEP + 1000) as u64;
    let (mut node, voter) = voting_primary(t0, target);
    // Trimmed: no more than the bound (plus the slack trimmed in steps) is held.
    let (first_held, held) = node.results();
    assert!(
        held.len() <= MAX_RESULTS_HELD + RESULTS_TRIM_STEP,
        "{}",
        held.len()
    );
    assert!(first_held.0 > 1);
    assert_eq!(first_held.0 - 1 + held.len() as u64, node.committed().0);

    // A client that logged everything up to the oldest held result comes back.
    let now = t0 + Duration::from_millis(100);
    let late = conn(2);
    let from = first_held.0;
    hello(&mut node, late, "late", from - 1, now);
    let committed = node.committed().0;
    let mut next = from;
    let mut bursts = 0;
    loop {
        let (results, drains) = step(&mut node, voter, now);
        let mine: Vec<_> = results.iter().filter(|r| r.0 == late).collect();
        assert!(
            mine.len() <= CATCHUP_BURST,
            "{} frames in one burst",
            mine.len()
        );
        for &&(_, first, count) in &mine {
            if first == next {
                next += count as u64;
            }
        }
        bursts += 1;
        if drains.is_empty() {
            break;
        }
        assert_eq!(drains, vec![late]);
        node.handle_drained(late);
    }
    assert!(
        next > committed,
        "caught up to {next}, committed {committed}"
    );
    assert!(bursts > 1, "a catch-up this long takes several bursts");

    // One further behind than the history reaches cannot be completed: it is refused for
    // good, and asked to join no view.
    let lost = conn(3);
    hello(&mut node, lost, "lost", from - 2, now);
    let to_lost: Vec<ServerMsg> = sent(&mut node)
        .into_iter()
        .filter_map(|(c, m)| (c == lost).then_some(m))
        .collect();
    assert!(
        matches!(&to_lost[..], [ServerMsg::Refused { permanent: true, reason, .. }]
            if reason.starts_with("results-unavailable")),
        "{to_lost:?}"
    );
    accept_every_proposal(&mut node, now);
    assert!(!node.status(now).members.iter().any(|m| m.id.0 == "lost"));
}

/// A log that ends at a seq this history holds, with other results (one from a history a
/// cold restart gave up), is refused for good, however far the history has moved past
/// it; the same length with this history's results is served.
#[test]
fn a_log_of_another_history_is_refused_for_good_and_one_of_this_history_is_served() {
    let t0 = Instant::now();
    let (mut node, _) = voting_primary(t0, 10);
    sent(&mut node);

    let (other, same) = (conn(2), conn(3));
    let elsewhere = std::iter::repeat_n(Tally { yes: 0, no: 1 }, 5);
    node.handle_hello(
        other,
        Hello::Client {
            id: ClientId("other".into()),
            last_seq: Seq(5),
            view: View(0),
            digest: HistoryDigest::EMPTY.over(Seq(1), elsewhere),
        },
        t0,
    );
    hello(&mut node, same, "same", 5, t0);
    let replies = sent(&mut node);
    let to = |c| {
        replies
            .iter()
            .filter(move |(to, _)| *to == c)
            .map(|(_, m)| m)
    };
    assert!(
        matches!(to(other).collect::<Vec<_>>()[..], [ServerMsg::Refused { permanent: true, reason, .. }]
            if reason.starts_with("client-diverged")),
        "{replies:?}"
    );
    assert!(
        to(same).any(|m| matches!(m, ServerMsg::Welcome { .. })),
        "{replies:?}"
    );
    assert!(
        to(same).any(|m| matches!(m, ServerMsg::Results { first: Seq(6), .. })),
        "{replies:?}"
    );
}

/// Every client accepts every proposal it gets, until none is left: the clients that
/// said hello are members.
fn accept_every_proposal(node: &mut Node, now: Instant) {
    loop {
        let proposals: Vec<(ConnId, View)> = sent(node)
            .into_iter()
            .filter_map(|(c, m)| match m {
                ServerMsg::Propose { view, .. } => Some((c, view.number)),
                _ => None,
            })
            .collect();
        if proposals.is_empty() {
            return;
        }
        for (c, view) in proposals {
            let accept = ClientMsg::Accept {
                view,
                last_seq: Seq(0),
                votes: Vec::new(),
                tail: Vec::new(),
                tail_base: HistoryDigest::EMPTY,
                followed_members: None,
                promised_members: None,
            };
            node.handle_client_msg(c, accept, now);
        }
    }
}

/// Every output the node queued, as (connection, message) pairs, in order.
fn sent(node: &mut Node) -> Vec<(ConnId, ServerMsg)> {
    let mut all = Vec::new();
    while let Some(out) = node.poll_output() {
        match out {
            Output::ToClient(c, msg) => all.push((c, msg)),
            Output::ToClients(cs, msg) => all.extend(cs.into_iter().map(|c| (c, msg.clone()))),
            _ => {}
        }
    }
    all
}

fn votes(first: u64, count: u64) -> ClientMsg {
    ClientMsg::Votes {
        view: View(1),
        votes: (first..first + count).map(|s| (Seq(s), true)).collect(),
    }
}

/// The results each connection got, in order, as `(conn, first seq, count)`.
fn results_sent(node: &mut Node) -> Vec<(ConnId, u64, usize)> {
    sent(node)
        .into_iter()
        .filter_map(|(c, m)| match m {
            ServerMsg::Results { first, tallies, .. } => Some((c, first.0, tallies.len())),
            _ => None,
        })
        .collect()
}

/// A primary whose two clients, on connections 1 and 2, are members: accepting the views
/// that made them so, both granted it their lease. Its first ballots are open.
fn two_members(t0: Instant) -> (Node, ConnId, ConnId) {
    let mut node = primary(t0);
    let (a, b) = (conn(1), conn(2));
    hello(&mut node, a, "a", 0, t0);
    hello(&mut node, b, "b", 0, t0);
    accept_every_proposal(&mut node, t0);
    node.handle_timeout(t0);
    (node, a, b)
}

/// Results published one after another in a turn (before the host drains the outputs)
/// leave in one frame, but never overtake a message to one client: a catch-up it asked
/// for with `Resend` stays before the next result.
#[test]
fn results_published_in_one_turn_ride_in_one_frame() {
    let t0 = Instant::now();
    let (mut node, a, b) = two_members(t0);
    let asked: Vec<_> = sent(&mut node)
        .into_iter()
        .filter_map(|(c, m)| match m {
            ServerMsg::VoteRequest { first, count, .. } => Some((c, first.0, count)),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![(a, 1, 64), (b, 1, 64)]);

    // Ballots 1, 2 and 3 complete one message at a time, in one turn.
    for seq in 1..=3 {
        node.handle_client_msg(a, votes(seq, 1), t0);
        node.handle_client_msg(b, votes(seq, 1), t0);
    }
    assert_eq!(results_sent(&mut node), vec![(a, 1, 3), (b, 1, 3)]);

    // B asks for results again between two publishes of one turn.
    for c in [a, b] {
        node.handle_client_msg(c, votes(4, 1), t0);
    }
    let resend = ClientMsg::Resend {
        view: View(1),
        from: Seq(2),
    };
    node.handle_client_msg(b, resend, t0);
    for c in [a, b] {
        node.handle_client_msg(c, votes(5, 1), t0);
    }
    assert_eq!(
        results_sent(&mut node),
        vec![(a, 4, 1), (b, 4, 1), (b, 2, 3), (a, 5, 1), (b, 5, 1)]
    );
}

/// A leaver that was sent results no member has logged yet is not told `Left`: if it
/// exited and both servers died, a cold restart would count those ballots again without
/// its copy (simulator seed 85969). It is sent no more results meanwhile, and told once a
/// member says it logged them.
#[test]
fn a_leaver_goes_only_once_a_member_logged_what_it_was_sent() {
    let t0 = Instant::now();
    let mut node = primary(t0);
    let (a, b, going) = (conn(1), conn(2), conn(3));
    for (c, id) in [(a, "a"), (b, "b"), (going, "going")] {
        hello(&mut node, c, id, 0, t0);
    }
    accept_every_proposal(&mut node, t0);
    node.handle_timeout(t0);
    for c in [a, b, going] {
        node.handle_client_msg(c, votes(1, 3), t0);
    }
    sent(&mut node);
    node.handle_client_msg(going, ClientMsg::Leave { view: View(1) }, t0);
    accept_every_proposal(&mut node, t0);
    // Every ballot open before the view without it counts its vote.
    let window = 64;
    for c in [a, b, going] {
        node.handle_client_msg(c, votes(4, window - 3), t0);
    }
    let committed = node.committed();
    assert!(committed >= Seq(window), "{committed}");
    let told = |msgs: &[(ConnId, ServerMsg)]| {
        msgs.iter()
            .any(|(c, m)| *c == going && matches!(m, ServerMsg::Left { .. }))
    };
    assert!(
        !told(&sent(&mut node)),
        "told before any member logged a result"
    );

    // More ballots complete without it: it is sent none of them.
    node.handle_timeout(t0);
    for c in [a, b] {
        node.handle_client_msg(c, votes(committed.0 + 1, 1), t0);
    }
    let msgs = sent(&mut node);
    let results: Vec<_> = msgs
        .iter()
        .filter(|(_, m)| matches!(m, ServerMsg::Results { .. }))
        .map(|(c, _)| *c)
        .collect();
    assert!(
        results.contains(&a) && !results.contains(&going),
        "{results:?}"
    );
    assert!(!told(&msgs));

    // A member that logged less than it was sent does not release it; one that logged
    // all of it does.
    let ack = |logged: u64| ClientMsg::LeaseAck {
        view: View(1),
        round: 0,
        logged: Seq(logged),
    };
    node.handle_client_msg(a, ack(committed.0 - 1), t0);
    assert!(!told(&sent(&mut node)));
    node.handle_client_msg(b, ack(committed.0), t0);
    assert!(
        told(&sent(&mut node)),
        "not told once a member logged its results"
    );
}

/// The members that may release a draining leaver are those of the newest view: with a
/// proposal on its way whose members are all new (the only old member leaves too), none
/// of them has logged the leaver's results yet, and it waits (it once went at once).
#[test]
fn a_leaver_waits_for_the_members_of_the_view_on_its_way() {
    let t0 = Instant::now();
    let mut node = primary(t0);
    let (a, going, b) = (conn(1), conn(2), conn(3));
    hello(&mut node, a, "a", 0, t0);
    hello(&mut node, going, "going", 0, t0);
    accept_every_proposal(&mut node, t0);
    node.handle_timeout(t0);
    for c in [a, going] {
        node.handle_client_msg(c, votes(1, 3), t0);
    }
    node.handle_client_msg(going, ClientMsg::Leave { view: View(1) }, t0);
    accept_every_proposal(&mut node, t0);
    for c in [a, going] {
        node.handle_client_msg(c, votes(4, 61), t0);
    }
    assert!(node.committed() >= Seq(64));
    // A joiner comes, and the one member left leaves: the view on its way has only the
    // joiner, which has logged nothing.
    hello(&mut node, b, "b", 0, t0);
    node.handle_client_msg(a, ClientMsg::Leave { view: View(1) }, t0);
    let told = sent(&mut node)
        .iter()
        .any(|(c, m)| *c == going && matches!(m, ServerMsg::Left { .. }));
    assert!(!told, "released on the word of no member that stays");
}

/// A backup that took over before any ballot opened holds the cluster's history, not a
/// fresh one: a client whose hello reports a view above every one it heard of (a
/// proposal of the dead primary's it never saw) must not pull it into a cold-restart
/// recovery, which a server with nothing behind it otherwise enters (session 6's review).
/// Ballot 1 opens as soon as the members are in, before a backup may join, so only a
/// node-level test reaches this.
#[test]
fn a_backup_that_took_over_before_ballot_one_is_no_fresh_primary() {
    let t0 = Instant::now();
    let (p_addr, b_addr): (SocketAddr, SocketAddr) = (
        "127.0.0.1:7000".parse().expect("addr"),
        "127.0.0.1:7001".parse().expect("addr"),
    );
    let mut node = Node::new(
        NodeConfig {
            node: NodeId(2),
            listen: b_addr,
            start: StartRole::Backup { join: p_addr },
            heartbeat: Duration::from_secs(1),
            miss_limit: 5,
            backup_start_delay: Duration::ZERO,
            ballot_interval: Duration::ZERO,
            ballots: None,
            min_clients: 1,
            window: 64,
            spawn_backup: false,
            absent_after: None,
        },
        t0,
    );
    node.handle_timeout(t0);
    assert!(
        std::iter::from_fn(|| node.poll_output()).any(|o| o == Output::Dial(p_addr)),
        "the joiner dials the primary"
    );
    let peer = conn(9);
    node.handle_connected(peer, p_addr, t0);
    let view2 = ViewInfo {
        number: View(2),
        primary: p_addr,
        backup: None,
    };
    let ids = ["a", "b", "c"].map(|id| ClientId(id.into()));
    let snapshot = Snapshot {
        view: view2,
        clients: ids.to_vec(),
        members: vec![0, 1, 2],
        results_first: Seq(1),
        results: Vec::new(),
        results_base: HistoryDigest::EMPTY,
        open: Vec::new(),
    };
    node.handle_peer_msg(peer, PeerMsg::Snapshot(Box::new(snapshot)), t0);
    let view3 = ViewInfo {
        number: View(3),
        backup: Some(b_addr),
        ..view2
    };
    let install = PeerMsg::Install {
        view: view3,
        members: vec![0, 1, 2],
        removed: Vec::new(),
    };
    node.handle_peer_msg(peer, install, t0);
    assert_eq!(node.role(), Role::Backup);
    for (i, id) in ids.iter().enumerate() {
        let c = conn(i as u32 + 1);
        let hello = Hello::Client {
            id: id.clone(),
            last_seq: Seq(0),
            view: View(3),
            digest: HistoryDigest::EMPTY,
        };
        node.handle_hello(c, hello, t0);
    }
    // The primary dies; the backup takes over, and the clients accept.
    node.handle_closed(peer, t0);
    accept_every_proposal(&mut node, t0);
    assert_eq!(node.role(), Role::Primary);
    assert!(node.view().number > View(3) && node.next_seq() == Seq(1));
    // A client that promised a proposal this server never saw comes back.
    let hello = Hello::Client {
        id: ids[0].clone(),
        last_seq: Seq(0),
        view: View(40),
        digest: HistoryDigest::EMPTY,
    };
    node.handle_hello(conn(7), hello, t0);
    assert!(
        !node.is_recovering(),
        "a backup that took over entered a recovery"
    );
}

/// A cold restart takes in every client that says hello with a log; once the history is
/// rebuilt (here from member `a`'s), one whose log is of another history is refused as a
/// hello would be then, not continued (an adversarial review found it was taken in).
#[test]
fn a_log_of_another_history_taken_in_while_recovering_is_refused_once_rebuilt() {
    let t0 = Instant::now();
    let mut node = primary(t0);
    let (a, x) = (conn(1), conn(2));
    let ours: Vec<Tally> = (0..5).map(|i| Tally { yes: i, no: 1 }).collect();
    let theirs: Vec<Tally> = (0..3).map(|i| Tally { yes: 9, no: i }).collect();
    let digest = |tallies: &[Tally]| HistoryDigest::EMPTY.over(Seq(1), tallies.iter().copied());
    let say_hello = |node: &mut Node, c, id: &str, tallies: &[Tally], view| {
        let hello = Hello::Client {
            id: ClientId(id.into()),
            last_seq: Seq(tallies.len() as u64),
            view: View(view),
            digest: digest(tallies),
        };
        node.handle_hello(c, hello, t0);
    };
    say_hello(&mut node, a, "a", &ours, 3);
    assert!(node.is_recovering());
    say_hello(&mut node, x, "x", &theirs, 2);
    let record = |view, id: &str| MemberRecord {
        view: View(view),
        members: Fingerprint::of([&ClientId(id.into())]),
        member: true,
    };
    let proposals: Vec<(ConnId, View)> = sent(&mut node)
        .into_iter()
        .filter_map(|(c, m)| match m {
            ServerMsg::Propose { view, .. } => Some((c, view.number)),
            _ => None,
        })
        .collect();
    for (c, view) in proposals {
        let (tail, followed) = if c == a {
            (&ours, record(3, "a"))
        } else {
            (&theirs, record(2, "x"))
        };
        let accept = ClientMsg::Accept {
            view,
            last_seq: Seq(tail.len() as u64),
            votes: Vec::new(),
            tail: tail.clone(),
            tail_base: HistoryDigest::EMPTY,
            followed_members: Some(followed),
            promised_members: None,
        };
        node.handle_client_msg(c, accept, t0);
    }
    assert!(!node.is_recovering(), "the recovery installs");
    assert_eq!(node.results(), (Seq(1), &ours[..]));
    let replies = sent(&mut node);
    assert!(
        replies.iter().any(|(c, m)| *c == x
            && matches!(m, ServerMsg::Refused { permanent: true, reason, .. }
                if reason.starts_with("client-diverged"))),
        "{replies:?}"
    );
    assert!(
        !replies
            .iter()
            .any(|(c, m)| *c == a && matches!(m, ServerMsg::Refused { .. })),
        "{replies:?}"
    );
}

/// `MAX_CLIENTS` is reached by hellos alone: the next new name is refused, for now and
/// with the limit named, and closed; a name already registered still comes back, and the
/// registry does not grow. (Each hello costs O(1) in the registry's size: a look at every
/// client per hello made this test O(n²).)
#[test]
fn the_client_past_max_clients_is_refused_and_the_registered_still_come_back() {
    use crate::proto::limits::MAX_CLIENTS;
    let now = Instant::now();
    let mut node = primary(now);
    for n in 0..MAX_CLIENTS as u32 {
        hello(&mut node, conn(n), &format!("c{n}"), 0, now);
        while node.poll_output().is_some() {}
    }
    assert_eq!(node.status(now).clients.len(), MAX_CLIENTS);

    let over = conn(MAX_CLIENTS as u32);
    hello(&mut node, over, "one-too-many", 0, now);
    let (mut refused, mut closed) = (None, false);
    while let Some(out) = node.poll_output() {
        match out {
            Output::ToClient(
                c,
                ServerMsg::Refused {
                    reason, permanent, ..
                },
            ) if c == over => refused = Some((reason, permanent)),
            Output::Close(c, _) if c == over => closed = true,
            _ => {}
        }
    }
    let (reason, permanent) = refused.expect("the client past the limit was not refused");
    assert!(
        reason.contains(&format!("at most {MAX_CLIENTS} clients")),
        "{reason}"
    );
    assert!(
        !permanent,
        "a full registry is no reason to give up for good"
    );
    assert!(closed, "the refused connection stays open");

    let back = conn(MAX_CLIENTS as u32 + 1);
    hello(&mut node, back, "c7", 0, now);
    let mut welcomed = false;
    while let Some(out) = node.poll_output() {
        match out {
            Output::ToClient(c, ServerMsg::Welcome { .. }) if c == back => welcomed = true,
            Output::ToClient(c, ServerMsg::Refused { reason, .. }) if c == back => {
                panic!("a registered client was refused: {reason}")
            }
            _ => {}
        }
    }
    assert!(welcomed, "a registered client coming back was not welcomed");
    assert_eq!(node.status(now).clients.len(), MAX_CLIENTS);
}

/// A heartbeat holds its lease renewal back for the next publish, which sends it right
/// after the results (one write to each client, and the clients' acks ride with their
/// votes), stamped when it leaves; with no publish it leaves half a heartbeat later.
#[test]
fn a_lease_renewal_rides_with_the_next_results_or_leaves_after_its_hold() {
    let t0 = Instant::now();
    let (mut node, a, b) = two_members(t0);
    sent(&mut node);
    let renewals_and_results = |node: &mut Node| -> Vec<(ConnId, &'static str, u64)> {
        (sent(node).into_iter())
            .filter_map(|(c, m)| match m {
                ServerMsg::Lease { round, .. } => Some((c, "Lease", round)),
                ServerMsg::Results { first, .. } => Some((c, "Results", first.0)),
                _ => None,
            })
            .collect()
    };

    // The install's heartbeat held its renewal too: it has left by the end of its hold.
    let hold = node.cfg.lease_renewal_hold();
    node.handle_timeout(t0 + hold);
    sent(&mut node);

    // The next heartbeat falls due; its renewal is held.
    let beat = t0 + node.cfg.heartbeat;
    node.handle_timeout(beat);
    assert_eq!(renewals_and_results(&mut node), vec![], "held");
    // Ballot 1 completes: the results, then the renewal, to each client.
    let publish = beat + Duration::from_millis(200);
    node.handle_client_msg(a, votes(1, 1), publish);
    node.handle_client_msg(b, votes(1, 1), publish);
    let out = renewals_and_results(&mut node);
    let round = out.iter().find(|m| m.1 == "Lease").map_or(0, |m| m.2);
    assert_eq!(
        out,
        vec![
            (a, "Results", 1),
            (b, "Results", 1),
            (a, "Lease", round),
            (b, "Lease", round)
        ]
    );
    // Stamped at the publish, not at the heartbeat: acked, it runs a lease from then.
    for c in [a, b] {
        let ack = ClientMsg::LeaseAck {
            view: View(1),
            round,
            logged: Seq(1),
        };
        node.handle_client_msg(c, ack, publish);
    }
    let lease = node.cfg.peer_timeout();
    assert!(node.holds_lease(beat + lease + Duration::from_millis(100)));

    // The next heartbeat, with no publish: the renewal leaves after its hold alone.
    let beat = beat + node.cfg.heartbeat;
    node.handle_timeout(beat);
    assert_eq!(renewals_and_results(&mut node), vec![], "held");
    node.handle_timeout(beat + hold - Duration::from_millis(1));
    assert_eq!(renewals_and_results(&mut node), vec![], "held");
    node.handle_timeout(beat + hold);
    let round = round + 1;
    assert_eq!(
        renewals_and_results(&mut node),
        vec![(a, "Lease", round), (b, "Lease", round)]
    );
}

/// A renewal held back while the lease would lapse helps nothing: once a majority's lease
/// would run out within the hold, a heartbeat sends its renewal at once. With a lease of
/// one heartbeat there is no hold at all.
#[test]
fn a_lease_renewal_leaves_with_its_heartbeat_when_the_lease_would_lapse_in_the_hold() {
    let t0 = Instant::now();
    let (mut node, a, b) = two_members(t0);
    let hold = node.cfg.lease_renewal_hold();
    assert!(!hold.is_zero());
    let renewals = |node: &mut Node| -> Vec<ConnId> {
        (sent(node).into_iter())
            .filter_map(|(c, m)| matches!(m, ServerMsg::Lease { .. }).then_some(c))
            .collect()
    };
    node.handle_timeout(t0 + hold);
    sent(&mut node);
    // No client acks a renewal: the lease the install gave runs out.
    let mut lapsed = false;
    let (heartbeat, beats) = (node.cfg.heartbeat, 2 * node.cfg.miss_limit);
    for beat in (1..=beats).map(|k| t0 + heartbeat * k) {
        let lapses_in_hold = !node.holds_lease(beat + hold);
        node.handle_timeout(beat);
        if lapses_in_hold {
            assert_eq!(renewals(&mut node), vec![a, b], "at once");
            lapsed = true;
            break;
        }
        assert_eq!(renewals(&mut node), vec![], "held");
        node.handle_timeout(beat + hold);
        assert_eq!(renewals(&mut node), vec![a, b], "after the hold");
    }
    assert!(lapsed, "the lease never ran out");

    let one_beat_lease = NodeConfig {
        miss_limit: 1,
        ..node.cfg.clone()
    };
    assert_eq!(one_beat_lease.lease_renewal_hold(), Duration::ZERO);
}
