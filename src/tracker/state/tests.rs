//! The tracker's state machine in simulated time.

use super::*;
use crate::wire::{FileInfo, Message, NodeToTracker, RootHash};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// An owner list as sent: to whom, which file, (owner, address, complete).
type SentList = (SessionId, String, Vec<(String, SocketAddr, bool)>);

/// Collects what the tracker sends, as owner lists and error reasons.
#[derive(Default)]
struct Sent {
    lists: Vec<SentList>,
    errors: Vec<(SessionId, String)>,
    closed: Vec<SessionId>,
}

impl Outbox for Sent {
    fn send(&mut self, to: SessionId, msg: &Message<'_>) {
        match msg {
            Message::TrackerToNode(list) => self.lists.push((
                to,
                list.name.to_owned(),
                list.owners
                    .iter()
                    .map(|o| (o.node_name.to_owned(), o.addr, o.complete))
                    .collect(),
            )),
            Message::Error { reason, .. } => self.errors.push((to, (*reason).to_owned())),
            other => panic!("unexpected message {other:?}"),
        }
    }
    fn close(&mut self, to: SessionId) {
        self.closed.push(to);
    }
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

fn info(root: u8) -> FileInfo {
    FileInfo {
        size: 100,
        piece_size: 16384,
        root: [root; 32],
    }
}

/// Each test node's own secret (derived from its name, so a restart presents the same one).
fn secret_of(name: &str) -> [u8; 32] {
    *blake3::hash(name.as_bytes()).as_bytes()
}

fn join(
    t: &mut TrackerState,
    now: Instant,
    session: SessionId,
    name: &str,
    port: u16,
    out: &mut Sent,
) {
    t.handle_accept(now, session, IP);
    let hello = Message::NodeToTracker(NodeToTracker::Hello {
        node_name: name,
        listen_port: port,
        secret: secret_of(name),
    });
    t.handle_frame(now, session, &hello, out);
}

fn have(
    t: &mut TrackerState,
    now: Instant,
    session: SessionId,
    file: &str,
    root: u8,
    out: &mut Sent,
) {
    let msg = Message::NodeToTracker(NodeToTracker::Have {
        name: file,
        info: info(root),
        complete: true,
    });
    t.handle_frame(now, session, &msg, out);
}

fn need(t: &mut TrackerState, now: Instant, session: SessionId, file: &str, out: &mut Sent) {
    t.handle_frame(
        now,
        session,
        &Message::NodeToTracker(NodeToTracker::Need { name: file }),
        out,
    );
}

#[test]
fn owners_are_listed_at_the_seen_address_with_the_declared_port() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    join(&mut t, now, 2, "b", 4001, &mut out);
    need(&mut t, now, 2, "f", &mut out);
    assert_eq!(
        out.lists,
        vec![(
            2,
            "f".to_owned(),
            vec![("a".to_owned(), SocketAddr::new(IP, 4000), true)]
        )]
    );
}

#[test]
fn watchers_are_told_of_changes_after_the_batching_delay() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    need(&mut t, now, 1, "f", &mut out);
    join(&mut t, now, 2, "b", 4001, &mut out);
    have(&mut t, now, 2, "f", 1, &mut out);
    assert_eq!(out.lists.len(), 1, "only the first answer so far");
    let due = t.poll_timeout().expect("a notification is scheduled");
    assert!(due <= now + Duration::from_secs(1));
    t.handle_timeout(due, &mut out);
    assert_eq!(out.lists.len(), 2);
    assert_eq!(out.lists[1].2.len(), 1);
}

#[test]
fn exit_removes_the_node_from_every_list() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    have(&mut t, now, 1, "g", 2, &mut out);
    t.handle_frame(
        now,
        1,
        &Message::NodeToTracker(NodeToTracker::Exit),
        &mut out,
    );
    assert!(t.owners_of("f").is_empty());
    assert!(t.owners_of("g").is_empty());
    assert_eq!(t.owner_entries(), 0);
    assert_eq!(out.closed, vec![1]);
}

#[test]
fn a_vanished_node_is_dropped_after_the_grace_period_unless_it_returns() {
    let now = Instant::now();
    let limits = TrackerLimits::default();
    let grace = limits.grace;
    let mut t = TrackerState::new(limits);
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    join(&mut t, now, 2, "b", 4001, &mut out);
    have(&mut t, now, 2, "f", 1, &mut out);
    t.handle_closed(now, 1);
    t.handle_closed(now, 2);
    // b comes back within the grace period; a does not.
    join(&mut t, now + grace / 2, 3, "b", 4001, &mut out);
    t.handle_timeout(now + grace + Duration::from_millis(1), &mut out);
    let owners: Vec<String> = t.owners_of("f").into_iter().map(|o| o.0).collect();
    assert_eq!(owners, vec!["b".to_owned()]);
}

#[test]
fn two_versions_of_one_name_are_both_kept() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    join(&mut t, now, 2, "b", 4001, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    have(&mut t, now, 2, "f", 2, &mut out);
    let roots: HashSet<RootHash> = t.owners_of("f").into_iter().map(|o| o.2.root).collect();
    assert_eq!(roots.len(), 2);
}

#[test]
fn requests_before_hello_are_refused() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    t.handle_accept(now, 1, IP);
    need(&mut t, now, 1, "f", &mut out);
    assert_eq!(out.errors, vec![(1, "hello must come first".to_owned())]);
    assert_eq!(out.closed, vec![1]);
}

#[test]
fn table_bounds_hold() {
    let now = Instant::now();
    let limits = TrackerLimits {
        max_owners_per_file: 2,
        ..TrackerLimits::default()
    };
    let mut t = TrackerState::new(limits);
    let mut out = Sent::default();
    for (session, name) in ["a", "b", "c"].iter().enumerate() {
        join(&mut t, now, session, name, 4000, &mut out);
        have(&mut t, now, session, "f", 1, &mut out);
    }
    assert_eq!(t.owner_entries(), 2);
    assert_eq!(out.errors.len(), 1);
}

const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8));

fn hello_as(
    t: &mut TrackerState,
    now: Instant,
    session: SessionId,
    ip: IpAddr,
    name: &str,
    secret: [u8; 32],
    out: &mut Sent,
) {
    t.handle_accept(now, session, ip);
    let hello = Message::NodeToTracker(NodeToTracker::Hello {
        node_name: name,
        listen_port: 4999,
        secret,
    });
    t.handle_frame(now, session, &hello, out);
}

fn send(
    t: &mut TrackerState,
    now: Instant,
    session: SessionId,
    req: NodeToTracker<'_>,
    out: &mut Sent,
) {
    t.handle_frame(now, session, &Message::NodeToTracker(req), out);
}

#[test]
fn a_name_is_reclaimed_only_with_its_secret() {
    let now = Instant::now();
    let grace = TrackerLimits::default().grace;
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "alice", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    // A stranger on alice's own host, with another secret: refused, alice untouched.
    hello_as(&mut t, now, 2, IP, "alice", [9; 32], &mut out);
    assert_eq!(
        out.errors,
        vec![(2, "node name alice is held by another node".to_owned())]
    );
    assert_eq!(out.closed, vec![2]);
    t.handle_closed(now, 2);
    assert_eq!(t.owners_of("f")[0].1, SocketAddr::new(IP, 4000));
    // Alice crashes; within the grace period the stranger is still refused...
    t.handle_closed(now, 1);
    hello_as(
        &mut t,
        now + grace / 2,
        3,
        OTHER_IP,
        "alice",
        [9; 32],
        &mut out,
    );
    assert_eq!(out.errors.len(), 2);
    t.handle_closed(now, 3);
    t.handle_timeout(now + grace / 2, &mut out);
    assert_eq!(t.owners_of("f").len(), 1);
    // ...and alice, back from another address with her secret, keeps her entries there.
    hello_as(
        &mut t,
        now + grace / 2,
        4,
        OTHER_IP,
        "alice",
        secret_of("alice"),
        &mut out,
    );
    assert_eq!(out.errors.len(), 2);
    t.handle_timeout(now + grace * 2, &mut out);
    assert_eq!(t.owners_of("f")[0].1, SocketAddr::new(OTHER_IP, 4999));
    // A second connection of hers with the secret takes over and closes the first.
    hello_as(
        &mut t,
        now + grace * 2,
        5,
        IP,
        "alice",
        secret_of("alice"),
        &mut out,
    );
    assert_eq!(out.closed, vec![2, 3, 4]);
    assert_eq!(t.owners_of("f")[0].1, SocketAddr::new(IP, 4999));
}

#[test]
fn after_the_grace_period_the_name_is_free() {
    let now = Instant::now();
    let grace = TrackerLimits::default().grace;
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "alice", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    t.handle_closed(now, 1);
    let later = now + grace + Duration::from_millis(1);
    t.handle_timeout(later, &mut out);
    hello_as(&mut t, later, 2, OTHER_IP, "alice", [9; 32], &mut out);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(
        t.owners_of("f").is_empty(),
        "the new alice inherits nothing"
    );
}

#[test]
fn synced_drops_what_the_node_did_not_restate() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    have(&mut t, now, 1, "g", 2, &mut out);
    join(&mut t, now, 9, "w", 4009, &mut out);
    need(&mut t, now, 9, "f", &mut out);
    t.handle_closed(now, 1);
    // Restarted with f changed (a new root) and g kept.
    join(&mut t, now, 2, "a", 4000, &mut out);
    have(&mut t, now, 2, "f", 3, &mut out);
    have(&mut t, now, 2, "g", 2, &mut out);
    assert_eq!(
        t.owners_of("f").len(),
        2,
        "the old version stays until Synced"
    );
    send(&mut t, now, 2, NodeToTracker::Synced, &mut out);
    let roots: Vec<RootHash> = t.owners_of("f").iter().map(|o| o.2.root).collect();
    assert_eq!(roots, vec![[3; 32]]);
    assert_eq!(t.owners_of("g").len(), 1);
    // The watcher of f is told.
    t.handle_timeout(now + Duration::from_secs(1), &mut out);
    let last = out.lists.last().expect("a push");
    assert_eq!((last.0, last.1.as_str(), last.2.len()), (9, "f", 1));
}

#[test]
fn a_node_that_never_says_synced_keeps_its_entries() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    join(&mut t, now, 1, "a", 4000, &mut out);
    have(&mut t, now, 1, "f", 1, &mut out);
    t.handle_closed(now, 1);
    join(&mut t, now, 2, "a", 4000, &mut out);
    t.handle_timeout(now + Duration::from_secs(60), &mut out);
    assert_eq!(t.owners_of("f").len(), 1);
}

#[test]
fn fake_roots_from_one_host_cannot_keep_an_honest_owner_out() {
    let now = Instant::now();
    let limits = TrackerLimits::default();
    let versions = limits.max_versions_per_host;
    let mut t = TrackerState::new(limits);
    let mut out = Sent::default();
    join(&mut t, now, 1, "mallory", 4000, &mut out);
    for i in 0..4096u32 {
        let mut info = info(0);
        info.root[..4].copy_from_slice(&i.to_le_bytes());
        send(
            &mut t,
            now,
            1,
            NodeToTracker::Have {
                name: "f",
                info,
                complete: true,
            },
            &mut out,
        );
    }
    assert_eq!(t.owners_of("f").len(), versions);
    assert_eq!(out.errors.len(), 4096 - versions);
    assert!(
        out.errors[0].1.contains("versions of f"),
        "{:?}",
        out.errors[0]
    );
    hello_as(
        &mut t,
        now,
        2,
        OTHER_IP,
        "honest",
        secret_of("honest"),
        &mut out,
    );
    have(&mut t, now, 2, "f", 7, &mut out);
    assert_eq!(out.errors.len(), 4096 - versions);
    assert!(t.owners_of("f").iter().any(|o| o.0 == "honest"));
}

#[test]
fn a_full_owner_list_evicts_from_the_most_crowded_host() {
    let now = Instant::now();
    let limits = TrackerLimits {
        max_owners_per_file: 8,
        max_owners_per_host: 6,
        ..TrackerLimits::default()
    };
    let mut t = TrackerState::new(limits);
    let mut out = Sent::default();
    let hosts = [IP, OTHER_IP, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))];
    // Host 0 fills six places, host 1 two: the list is full.
    for s in 0..8usize {
        let ip = hosts[usize::from(s >= 6)];
        let name = format!("n{s}");
        hello_as(&mut t, now, s, ip, &name, secret_of(&name), &mut out);
        have(&mut t, now, s, "f", 1, &mut out);
    }
    assert_eq!(t.owners_of("f").len(), 8);
    // A newcomer from a third host takes a place of host 0.
    hello_as(
        &mut t,
        now,
        8,
        hosts[2],
        "honest",
        secret_of("honest"),
        &mut out,
    );
    have(&mut t, now, 8, "f", 1, &mut out);
    let owners = t.owners_of("f");
    assert_eq!(owners.len(), 8);
    assert!(owners.iter().any(|o| o.0 == "honest"));
    assert_eq!(owners.iter().filter(|o| o.1.ip() == IP).count(), 5);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    // Another from host 0 itself, the most crowded, is refused.
    hello_as(&mut t, now, 9, IP, "more", secret_of("more"), &mut out);
    have(&mut t, now, 9, "f", 1, &mut out);
    assert_eq!(out.errors.len(), 1);
}

#[test]
fn memory_budgets_refuse_with_a_clear_error() {
    let now = Instant::now();
    let limits = TrackerLimits {
        node_budget: 64 << 10,
        total_budget: 100 << 10,
        ..TrackerLimits::default()
    };
    let mut t = TrackerState::new(limits.clone());
    let mut out = Sent::default();
    let long = "x".repeat(240);
    join(&mut t, now, 1, "a", 4000, &mut out);
    for i in 0..1000 {
        have(&mut t, now, 1, &format!("{long}{i}"), 1, &mut out);
    }
    assert_eq!(
        out.errors.last().map(|e| e.1.as_str()),
        Some("tracker memory budget for node a reached (0 MiB)")
    );
    let used = t.node_memory("a").expect("a is known");
    assert!(used <= limits.node_budget);
    // Another node's watches fill the total budget.
    join(&mut t, now, 2, "b", 4001, &mut out);
    for i in 0..1000 {
        need(&mut t, now, 2, &format!("{long}w{i}"), &mut out);
    }
    assert_eq!(
        out.errors.last().map(|e| e.1.as_str()),
        Some("tracker memory budget reached (0 MiB in total)")
    );
    assert!(t.memory_used() <= limits.total_budget);
    // Everything is given back when the nodes leave.
    t.handle_closed(now, 1);
    t.handle_closed(now, 2);
    t.handle_timeout(now + Duration::from_secs(60), &mut out);
    assert_eq!(t.memory_used(), 0);
}

/// An outbox whose sessions in `congested` report backed-up output.
#[derive(Default)]
struct Backed {
    sent: Sent,
    congested: HashSet<SessionId>,
}

impl Outbox for Backed {
    fn send(&mut self, to: SessionId, msg: &Message<'_>) {
        self.sent.send(to, msg);
    }
    fn close(&mut self, to: SessionId) {
        self.sent.close(to);
    }
    fn congested(&self, to: SessionId) -> bool {
        self.congested.contains(&to)
    }
}

#[test]
fn a_backed_up_watcher_gets_only_the_latest_list_once_it_drains() {
    let mut now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Backed::default();
    join(&mut t, now, 1, "owner", 4000, &mut out.sent);
    join(&mut t, now, 2, "watcher", 4001, &mut out.sent);
    need(&mut t, now, 2, "f", &mut out.sent);
    need(&mut t, now, 2, "g", &mut out.sent);
    out.congested.insert(2);
    let before = out.sent.lists.len();
    // The owner flips f's completeness 100 times, g once.
    have(&mut t, now, 1, "g", 5, &mut out.sent);
    for i in 0..100 {
        let msg = Message::NodeToTracker(NodeToTracker::Have {
            name: "f",
            info: info(1),
            complete: i % 2 == 1,
        });
        t.handle_frame(now, 1, &msg, &mut out);
        now += Duration::from_millis(50);
        t.handle_timeout(now, &mut out);
        assert!(t.owed(2) <= 2);
    }
    assert_eq!(
        out.sent.lists.len(),
        before,
        "nothing pushed while backed up"
    );
    out.congested.clear();
    t.handle_drain(2, &mut out);
    let pushed: Vec<_> = out.sent.lists[before..]
        .iter()
        .map(|l| (l.0, l.1.clone(), l.2.clone()))
        .collect();
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    assert_eq!(pushed[0].1, "f");
    assert!(pushed[0].2[0].2, "the latest state: complete");
    assert_eq!(pushed[1].1, "g");
    assert_eq!(t.owed(2), 0);
}

#[test]
fn the_grace_heap_cancels_on_reconnect_and_expires_the_rest() {
    let now = Instant::now();
    let n = 2000;
    let limits = TrackerLimits {
        max_owners_per_host: n,
        ..TrackerLimits::default()
    };
    let grace = limits.grace;
    let mut t = TrackerState::new(limits);
    let mut out = Sent::default();
    for s in 0..n {
        join(&mut t, now, s, &format!("n{s}"), 4000, &mut out);
        have(&mut t, now, s, "f", 1, &mut out);
    }
    // Churn: every node drops and comes back many times, staggered in time.
    for round in 0..10u32 {
        let at = now + grace * round / 20;
        for s in 0..n {
            let old = s + round as usize * n;
            t.handle_closed(at, old);
            join(&mut t, at, old + n, &format!("n{s}"), 4000, &mut out);
        }
        assert!(t.deadlines_queued() <= 2 * (2 * n) + 64 + n);
    }
    // Now the even ones drop for good.
    let last = 10 * n;
    let at = now + grace;
    for s in (0..n).step_by(2) {
        t.handle_closed(at, s + last);
    }
    t.handle_timeout(at + grace / 2, &mut out);
    assert_eq!(t.owners_of("f").len(), n, "nobody expires early");
    t.handle_timeout(at + grace, &mut out);
    let left: HashSet<String> = t.owners_of("f").into_iter().map(|o| o.0).collect();
    assert_eq!(left.len(), n / 2);
    assert!(left
        .iter()
        .all(|name| name[1..].parse::<usize>().is_ok_and(|i| i % 2 == 1)));
    assert!(t.poll_timeout().is_none_or(|d| d > at + grace));
}

#[test]
fn a_connection_without_hello_is_closed_whatever_else_it_sends() {
    let now = Instant::now();
    let limits = TrackerLimits::default();
    let timeout = limits.hello_timeout;
    let mut t = TrackerState::new(limits);
    let mut out = Sent::default();
    t.handle_accept(now, 1, IP);
    join(&mut t, now, 2, "a", 4000, &mut out);
    for i in 1..10 {
        t.handle_frame(now + timeout * i / 10, 1, &Message::KeepAlive, &mut out);
    }
    t.handle_timeout(now + timeout - Duration::from_millis(1), &mut out);
    assert!(out.closed.is_empty());
    assert_eq!(t.poll_timeout(), Some(now + timeout));
    t.handle_timeout(now + timeout, &mut out);
    assert_eq!(out.closed, vec![1], "session 2 said hello and stays");
    assert_eq!(out.errors, vec![(1, "no hello in time".to_owned())]);
}

#[test]
fn hosts_filling_a_reply_cannot_keep_an_owner_elsewhere_out_of_it() {
    let now = Instant::now();
    let mut t = TrackerState::new(TrackerLimits::default());
    let mut out = Sent::default();
    // Four hosts, each at its cap of complete entries: more than one reply holds.
    let per_host = TrackerLimits::default().max_owners_per_host;
    let mut session = 1;
    for host in 0..4u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, host));
        for n in 0..per_host {
            let name = format!("fake-{host}-{n}");
            hello_as(&mut t, now, session, ip, &name, secret_of(&name), &mut out);
            have(&mut t, now, session, "f", 0, &mut out);
            session += 1;
        }
    }
    hello_as(
        &mut t,
        now,
        session,
        OTHER_IP,
        "honest",
        secret_of("honest"),
        &mut out,
    );
    have(&mut t, now, session, "f", 7, &mut out);
    assert!(out.errors.is_empty(), "{:?}", out.errors.first());
    join(&mut t, now, session + 1, "asker", 4001, &mut out);
    need(&mut t, now, session + 1, "f", &mut out);
    let (_, _, listed) = out.lists.last().expect("a reply");
    assert_eq!(listed.len(), crate::wire::MAX_OWNERS_PER_REPLY);
    assert!(
        listed.iter().any(|(name, _, _)| name == "honest"),
        "the owner on another host is listed"
    );
}
