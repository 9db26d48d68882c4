//! Connection floods against real processes: thousands of idle sockets from one host
//! must not lock honest nodes out of the tracker or of an owner.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Idle sockets the attacker opens to each process (more than any process accepts).
const FLOOD: usize = 4_100;

/// Opens up to `count` idle connections to `target` from the loopback address `source`.
fn flood(source: [u8; 4], target: &str, count: usize) -> Vec<TcpStream> {
    let target: SocketAddr = target.parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::new();
    for _ in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let Ok(socket) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        else {
            break;
        };
        if socket.bind(&SocketAddr::from((source, 0)).into()).is_err() {
            break;
        }
        if socket
            .connect_timeout(&target.into(), Duration::from_millis(500))
            .is_ok()
        {
            held.push(socket.into());
        }
    }
    held
}

#[test]
fn idle_socket_floods_lock_nobody_out() {
    let tracker = Tracker::start();
    let data = random_bytes(3 * 1024 * 1024 + 777);
    let (owner, _owner_dir) = start_owner(&tracker, "owner", "f.bin", &data, &[]);
    let before = proc_kib(tracker.proc.pid(), "VmRSS");
    let started = Instant::now();
    let (_calm, calm_dir) = download_and_exit(&tracker, "calm", "f.bin");
    let calm = started.elapsed().as_secs_f64();
    assert_same_file(calm_dir.path(), "f.bin", &data);

    // One host sits on more sockets than either process accepts in all.
    let at_tracker = flood([127, 0, 0, 3], &tracker.addr, FLOOD);
    let at_owner = flood([127, 0, 0, 3], &owner.addr, FLOOD);
    println!(
        "flood: {} sockets held to the tracker, {} to the owner; tracker RSS {before} KiB -> {} KiB",
        at_tracker.len(),
        at_owner.len(),
        proc_kib(tracker.proc.pid(), "VmRSS")
    );

    // Honest nodes from another address still get in, and the download is exact.
    let started = Instant::now();
    let (_down, down_dir) = download_and_exit(&tracker, "honest", "f.bin");
    println!(
        "honest download: {calm:.2} s without the flood, {:.2} s during it",
        started.elapsed().as_secs_f64()
    );
    assert_same_file(down_dir.path(), "f.bin", &data);
    drop(at_tracker);
    drop(at_owner);
}
