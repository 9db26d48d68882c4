//! The node's command line and standard-input commands, as a user sees them:
//! clear error lines, nothing written outside the folder, exit statuses, and a
//! node that goes on serving after a bad command.

mod common;

use common::{list_dir, node_args, put_file, random_bytes, start_owner, tempdir, Node, Tracker};

/// `upload` of a file that is not in the folder: one clear error line naming
/// the file, and the node goes on serving (commands answer, a later upload works).
#[test]
fn upload_of_missing_file_is_reported_and_node_goes_on() {
    let tracker = Tracker::start();
    let dir = tempdir();
    let mut node = Node::start("solo", &tracker, dir.path(), &[]);

    node.send("upload nope.bin");
    let line = node
        .proc
        .wait_stderr(|l| l.contains("upload nope.bin") && l.contains("not in my folder"));
    assert!(line.contains("ERROR"), "not logged as an error: {line}");

    // Still answering commands.
    let mark = node.proc.stdout_mark();
    node.send("help");
    node.proc.wait_stdout_from(mark, |l| l.contains("status"));

    // And a later valid upload works and reaches the tracker.
    let data = random_bytes(200_000);
    put_file(dir.path(), "real.bin", &data);
    node.send("upload real.bin");
    let sharing = node.wait_sharing("real.bin");
    assert!(sharing.contains("200000 bytes"), "{sharing}");
    tracker.wait_owners("real.bin", &["solo"]);
    assert!(node.proc.is_running());
}

/// `--download` of a file nobody owns with `--exit-when-done`: non-zero exit,
/// a line naming the file and saying there is no owner, no file written.
#[test]
fn download_of_unowned_file_fails_with_nonzero_exit() {
    let tracker = Tracker::start();
    let dir = tempdir();
    let mut node = Node::start_download("seeker", &tracker, dir.path(), "ghost");
    let status = node.proc.wait_exit();
    assert!(
        !status.success(),
        "exit status {status:?} after a failed download\n{}",
        node.proc.dump()
    );
    let errors = node.proc.stderr_lines();
    assert!(
        errors
            .iter()
            .any(|l| l.contains("download ghost failed") && l.contains("no owner")),
        "no clear failure line\n{}",
        node.proc.dump()
    );
    assert!(!dir.path().join("ghost").exists());
    let left: Vec<String> = list_dir(dir.path())
        .into_iter()
        .filter(|n| n.contains("ghost"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Names with `..` or `/` are refused with a clear line, from stdin and from
/// the command line, and nothing appears outside (or inside) the folder.
#[test]
fn path_tricks_are_refused() {
    let tracker = Tracker::start();
    // An owner that really has a file called `passwd`, so a download that
    // slipped through would have something to write.
    let (_owner, _owner_dir) = start_owner(&tracker, "owner", "passwd", &random_bytes(10_000), &[]);
    tracker.wait_owners("passwd", &["owner"]);

    let outer = tempdir();
    let dir = outer.path().join("node");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(outer.path().join("etc")).unwrap();
    let mut node = Node::start("victim", &tracker, &dir, &[]);

    for (cmd, name) in [
        ("download ../etc/passwd", "../etc/passwd"),
        ("download a/b", "a/b"),
        ("upload ..", ".."),
        ("download ..", ".."),
        ("torrent -setMode download ../passwd", "../passwd"),
        ("upload /etc/passwd", "/etc/passwd"),
        ("download a\\b", "a\\b"),
    ] {
        let verb = cmd.split_whitespace().rev().nth(1).unwrap();
        let mark = node.proc.stderr_mark();
        node.send(cmd);
        let line = node.proc.wait_stderr_from(mark, |l| {
            l.contains(&format!("{verb} {name}")) && l.contains("name refused")
        });
        assert!(line.contains("ERROR"), "{cmd}: {line}");
    }

    // Still serving, and nothing was written anywhere.
    let mark = node.proc.stdout_mark();
    node.send("help");
    node.proc.wait_stdout_from(mark, |l| l.contains("download"));
    assert_eq!(list_dir(&dir), Vec::<String>::new());
    assert_eq!(list_dir(outer.path()), vec!["etc", "node"]);
    assert_eq!(list_dir(&outer.path().join("etc")), Vec::<String>::new());

    // The same from the command line.
    let dir2 = outer.path().join("node2");
    std::fs::create_dir(&dir2).unwrap();
    let mut cli = Node::start_download("victim2", &tracker, &dir2, "../passwd");
    let status = cli.proc.wait_exit();
    assert!(
        cli.proc
            .stderr_lines()
            .iter()
            .any(|l| l.contains("../passwd") && l.contains("name refused")),
        "no clear refusal\n{}",
        cli.proc.dump()
    );
    assert!(!status.success(), "{status:?}\n{}", cli.proc.dump());
    assert_eq!(list_dir(&dir2), Vec::<String>::new());
    assert!(!outer.path().join("passwd").exists());
}

/// `status` shows the transfers (a shared file is named), `help` the commands.
#[test]
fn status_and_help() {
    let tracker = Tracker::start();
    let (mut node, _dir) =
        start_owner(&tracker, "talker", "shown.bin", &random_bytes(100_000), &[]);
    tracker.wait_owners("shown.bin", &["talker"]);

    let mark = node.proc.stdout_mark();
    node.send("status");
    node.proc
        .wait_stdout_from(mark, |l| l.contains("shown.bin"));

    let mark = node.proc.stdout_mark();
    node.send("help");
    for cmd in [
        "upload FILE",
        "download FILE",
        "torrent -setMode upload",
        "torrent -setMode download",
        "status",
        "exit",
    ] {
        node.proc.wait_stdout_from(mark, |l| l.contains(cmd));
    }

    // An unknown command gets a clear answer too, and the node goes on.
    let err_mark = node.proc.stderr_mark();
    node.send("frobnicate now");
    node.proc
        .wait_stderr_from(err_mark, |l| l.contains("frobnicate") && l.contains("help"));
    let mark = node.proc.stdout_mark();
    node.send("status");
    node.proc
        .wait_stdout_from(mark, |l| l.contains("shown.bin"));

    node.send("exit");
    let status = node.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", node.proc.dump());
}

/// End of standard input does not stop a node; SIGTERM makes it leave the
/// network cleanly (the tracker is told) with status 0.
#[test]
fn end_of_input_keeps_serving_and_sigterm_leaves_cleanly() {
    let tracker = Tracker::start();
    let data = random_bytes(150_000);
    let (mut node, _dir) = start_owner(&tracker, "quiet", "e.bin", &data, &[]);
    tracker.wait_owners("e.bin", &["quiet"]);
    node.proc.close_stdin();

    // Still serving after end of input: a download from it works.
    let down_dir = tempdir();
    let mut down = Node::start_download("reader", &tracker, down_dir.path(), "e.bin");
    assert!(down.proc.wait_exit().success(), "{}", down.proc.dump());
    common::assert_same_file(down_dir.path(), "e.bin", &data);
    assert!(node.proc.is_running(), "{}", node.proc.dump());

    let mark = tracker.proc.stderr_mark();
    node.proc.sigterm();
    let status = node.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", node.proc.dump());
    tracker
        .proc
        .wait_stderr_from(mark, |l| l.contains("node quiet exits"));
    tracker.wait_owners_from(mark, "e.bin", &[]);
}

/// A node name that cannot go on the wire (`/` in it, or empty) is refused at
/// start with a clear line and a non-zero status, instead of a node that
/// looks alive but can never register with the tracker.
#[test]
fn unusable_node_name_is_refused_at_start() {
    let tracker = Tracker::start();
    for name in ["a/b", ""] {
        let dir = tempdir();
        let mut proc = common::Proc::spawn(
            "bad-name node",
            common::NODE,
            &node_args(name, &tracker.addr, dir.path()),
        );
        let status = proc.wait_exit();
        assert!(!status.success(), "{name:?}: {status:?}\n{}", proc.dump());
        assert!(
            proc.stderr_lines().iter().any(|l| l.contains("name")),
            "{name:?}: no clear line\n{}",
            proc.dump()
        );
    }
}
