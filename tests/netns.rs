//! The tracker, an owner and a downloader each in its own network namespace,
//! joined by veth pairs through a bridge (10.77.0.0/24): no loopback between
//! them, so addresses are what a LAN would show. Needs root (`ip netns`);
//! skipped with a message when namespaces cannot be made.

mod common;

use std::process::Command;

use std::path::Path;

use common::{
    assert_same_file, node_args, owner_list, put_file, random_bytes, tempdir, Proc, NODE, TRACKER,
};

/// Runs `ip args...`; Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces, veth pairs and a bridge named after this process; all removed on drop.
struct Lan {
    bridge: String,
    /// (namespace, host-side veth, namespace-side veth)
    hosts: Vec<(String, String, String)>,
}

impl Lan {
    /// One namespace per `(tag, last address byte)`, at 10.77.0.N/24.
    fn new(members: &[(&str, u8)]) -> Result<Lan, String> {
        let id = std::process::id();
        let mut lan = Lan {
            bridge: format!("shlb{id}"),
            hosts: Vec::new(),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        for &(tag, n) in members {
            let ns = format!("shl{id}{tag}");
            let host = format!("shv{id}{tag}");
            let inner = format!("shp{id}{tag}");
            ip(&["netns", "add", &ns])?;
            lan.hosts.push((ns.clone(), host.clone(), inner.clone()));
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &lan.bridge])?;
            ip(&["link", "set", &host, "up"])?;
            let addr = format!("10.77.0.{n}/24");
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// (namespace, namespace-side interface) of member `i`.
    fn member(&self, i: usize) -> (&str, &str) {
        let (ns, _, inner) = &self.hosts[i];
        (ns, inner)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (ns, host, _) in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
            let _ = ip(&["link", "del", host]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// `ip netns exec NS program args...` as a harness process.
fn spawn_in(ns: &str, label: &str, program: &str, args: &[&str]) -> Proc {
    let mut all: Vec<String> = vec!["netns".into(), "exec".into(), ns.into(), program.into()];
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::spawn(label, "ip", &all)
}

/// `shoal-node -n NAME -p 0 --tracker TRACKER --dir DIR --listen-host HOST extra...` in `ns`.
fn spawn_node_in(
    ns: &str,
    name: &str,
    tracker: &str,
    dir: &Path,
    host: &str,
    extra: &[&str],
) -> Proc {
    let mut args = node_args(name, tracker, dir);
    args.extend(["--listen-host".to_string(), host.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_in(ns, &format!("node {name}"), NODE, &args)
}

/// A download across three namespaces, the owner behind a 50 mbit token
/// bucket: the file arrives intact and the tracker lists the owner at its
/// LAN address, not at loopback.
#[test]
fn download_across_namespaces() {
    let lan = match Lan::new(&[("t", 1), ("o", 2), ("d", 3)]) {
        Ok(lan) => lan,
        Err(why) => {
            eprintln!("SKIPPED download_across_namespaces: cannot make network namespaces ({why})");
            return;
        }
    };
    let (tns, _) = lan.member(0);
    let (ons, oif) = lan.member(1);
    let (dns, _) = lan.member(2);
    // Optional: a slower link on the owner's side.
    if let Err(why) = run(
        "ip",
        &[
            "netns", "exec", ons, "tc", "qdisc", "add", "dev", oif, "root", "tbf", "rate",
            "50mbit", "burst", "64kb", "latency", "50ms",
        ],
    ) {
        eprintln!("no traffic shaping on the owner's link: {why}");
    }

    let tracker_addr = "10.77.0.1:12340";
    let tracker = spawn_in(tns, "tracker", TRACKER, &["--listen", tracker_addr, "-v"]);
    tracker.wait_stdout(|l| l.starts_with("tracker listening on 10.77.0.1:12340"));

    let data = random_bytes(4 << 20);
    let odir = tempdir();
    put_file(odir.path(), "lan.bin", &data);
    let owner = spawn_node_in(
        ons,
        "owner",
        tracker_addr,
        odir.path(),
        "10.77.0.2",
        &["--upload", "lan.bin"],
    );
    owner.wait_stdout(|l| l.starts_with("sharing lan.bin ("));
    let listed = tracker.wait_stderr(|l| {
        owner_list(l, "lan.bin").is_some_and(|o| o == ["owner"]) && l.contains("owner@10.77.0.2:")
    });
    eprintln!("{listed}");

    let ddir = tempdir();
    let mut down = spawn_node_in(
        dns,
        "fetcher",
        tracker_addr,
        ddir.path(),
        "10.77.0.3",
        &["--download", "lan.bin", "--exit-when-done"],
    );
    let status = down.wait_exit();
    assert!(status.success(), "{status:?}\n{}", down.dump());
    eprintln!(
        "{}",
        down.wait_stdout(|l| l.starts_with("downloaded lan.bin ("))
    );
    assert_same_file(ddir.path(), "lan.bin", &data);
    // The downloader was listed at its own LAN address while it held pieces.
    tracker.wait_stderr(|l| {
        owner_list(l, "lan.bin").is_some_and(|o| o.iter().any(|n| n == "fetcher"))
            && l.contains("fetcher@10.77.0.3:")
    });
    assert!(
        !tracker
            .stderr_lines()
            .iter()
            .any(|l| l.contains("@127.0.0.1:")),
        "an owner listed at loopback:\n{}",
        tracker.dump()
    );
    // Processes go before the namespaces (declared after `lan`).
    drop(down);
    drop(owner);
    drop(tracker);
}
