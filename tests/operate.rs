//! Operating satchel without a daemon: the sendmail command, `-bs`, the
//! inetd mode on a pipe, and the detached queue run that delivers after them.

mod common;

use common::fake::FakeSmtp;
use common::{free_port, Server, TempDir, BIN};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Prepares a host (no daemon started) with users alice, bob and carol.
fn host(extra: &str) -> Server {
    Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "local_users = alice, bob, carol\n{}{extra}",
            if extra.contains("defer_delivery") {
                ""
            } else {
                "defer_delivery = no\n"
            }
        ),
    )
}

/// Runs `sendmail ARGS` (through a symlink named sendmail) with `input`.
fn sendmail(s: &Server, args: &[&str], input: &[u8]) -> Output {
    let link = s.dir.0.join("sendmail");
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    }
    let mut child = Command::new(&link)
        .args(args)
        .env("SATCHEL_CONFIG", &s.conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sendmail");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("wait")
}

fn one_message(s: &Server, user: &str) -> String {
    s.wait_for(&format!("mail for {user}"), || s.maildir(user).len() == 1);
    fs::read_to_string(&s.maildir(user)[0]).expect("read")
}

#[test]
fn sendmail_t_delivers_to_to_cc_and_bcc_and_no_copy_shows_bcc() {
    let s = host("");
    let out = sendmail(
        &s,
        &["-t"],
        b"To: alice@satchel.test\nCc: Bob <bob@satchel.test>\nBcc: carol\nSubject: minutes\n\nsee attached\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for user in ["alice", "bob", "carol"] {
        let m = one_message(&s, user);
        assert!(
            !m.to_ascii_lowercase().contains("\nbcc:"),
            "{user}'s copy shows Bcc:\n{m}"
        );
        assert!(m.contains("Subject: minutes\r\n"));
        assert!(
            m.contains("\r\nDate: ") && m.contains("\r\nMessage-ID: <") && m.contains("\r\nFrom: "),
            "{m}"
        );
        assert!(m.ends_with("\r\n\r\nsee attached\r\n"), "{m:?}");
    }
}

#[test]
fn sendmail_f_sets_the_reverse_path_and_i_keeps_a_lone_dot() {
    let s = host("");
    let out = sendmail(
        &s,
        &["-i", "-f", "robot@satchel.test", "-F", "The Robot", "alice"],
        b"Subject: dots\n\nbefore\n.\nafter\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = one_message(&s, "alice");
    assert!(
        m.starts_with("Return-Path: <robot@satchel.test>\r\n"),
        "{m}"
    );
    assert!(
        m.contains("From: \"The Robot\" <robot@satchel.test>\r\n"),
        "{m}"
    );
    assert!(m.ends_with("before\r\n.\r\nafter\r\n"), "{m:?}");
}

#[test]
fn without_i_a_lone_dot_ends_the_message() {
    let s = host("");
    let out = sendmail(&s, &["bob"], b"Subject: dot\n\nkept\n.\nnot kept\n");
    assert!(out.status.success());
    let m = one_message(&s, "bob");
    assert!(m.ends_with("kept\r\n") && !m.contains("not kept"), "{m:?}");
}

#[test]
fn bad_addresses_exit_65_or_67_with_one_clear_line() {
    let s = host("");
    let out = sendmail(&s, &["bad address@@x"], b"x\n");
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad address syntax"), "{err}");
    let out = sendmail(&s, &["nosuchuser@satchel.test"], b"x\n");
    assert_eq!(out.status.code(), Some(67));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("<nosuchuser@satchel.test>: user unknown")
    );
    let out = sendmail(&s, &["-Z"], b"");
    assert_eq!(out.status.code(), Some(64));
    assert!(s.queued().is_empty(), "nothing was queued");
}

#[test]
fn the_usual_cron_pipe_reaches_a_smarthost() {
    let port = free_port();
    let smarthost = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    let s = host(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let out = sendmail(
        &s,
        &["-i", "admin@remote.test"],
        b"the nightly job finished\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_for("the smarthost's copy", || smarthost.received().len() == 1);
    let got = &smarthost.received()[0];
    assert_eq!(got.rcpts, vec!["admin@remote.test"]);
    let text = String::from_utf8_lossy(&got.data);
    assert!(
        text.starts_with("Received: by mx.satchel.test (satchel, from userid "),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nthe nightly job finished\r\n"),
        "{text:?}"
    );
    s.wait_for("an empty queue", || s.queued().is_empty());
}

#[test]
fn sendmail_bs_speaks_smtp_on_stdin() {
    let s = host("");
    let out = sendmail(
        &s,
        &["-bs"],
        b"EHLO local\r\nMAIL FROM:<alice@satchel.test>\r\nRCPT TO:<bob@satchel.test>\r\nDATA\r\nSubject: bs\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("220 mx.satchel.test ESMTP"), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as "), "{text}");
    assert!(text.ends_with("221 2.0.0 Bye\r\n"), "{text}");
    let m = one_message(&s, "bob");
    assert!(m.contains("Received: from local (localhost)\r\n"), "{m}");
}

#[test]
fn inetd_mode_on_a_pipe_queues_and_delivers_without_a_daemon() {
    let s = host("");
    let mut child = Command::new(BIN)
        .args(["inetd", "-c"])
        .arg(&s.conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inetd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"HELO pipe\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<carol@satchel.test>\r\nDATA\r\nSubject: inetd\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr in inetd mode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    one_message(&s, "carol");
}

#[test]
fn mailq_and_newaliases_links_work() {
    let s = host("defer_delivery = yes\n");
    fs::write(s.dir.0.join("aliases"), "postmaster: alice\n").unwrap();
    let out = sendmail(&s, &["alice"], b"Subject: q\n\nx\n");
    assert!(out.status.success());
    let dir = TempDir::new("links");
    let link = |name: &str| -> PathBuf {
        let p = dir.0.join(name);
        std::os::unix::fs::symlink(BIN, &p).unwrap();
        p
    };
    let run = |p: &Path| {
        Command::new(p)
            .env("SATCHEL_CONFIG", &s.conf)
            .output()
            .unwrap()
    };
    let q = run(&link("mailq"));
    assert!(String::from_utf8_lossy(&q.stdout).contains("alice@satchel.test (pending)"));
    let n = run(&link("newaliases"));
    assert!(n.status.success());
    assert!(String::from_utf8_lossy(&n.stdout).contains("1 aliases"));
}
