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

fn one_message(s: &Server, user: &str) -> String {
    s.wait_for(&format!("mail for {user}"), || s.maildir(user).len() == 1);
    fs::read_to_string(&s.maildir(user)[0]).expect("read")
}

#[test]
fn sendmail_t_delivers_to_to_cc_and_bcc_and_no_copy_shows_bcc() {
    let s = host("");
    let out = s.sendmail(&["-t"],
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
        assert!(m.contains("Subject: minutes\n"));
        assert!(
            m.contains("\nDate: ") && m.contains("\nMessage-ID: <") && m.contains("\nFrom: "),
            "{m}"
        );
        assert!(m.ends_with("\n\nsee attached\n"), "{m:?}");
    }
}

#[test]
fn sendmail_f_sets_the_reverse_path_and_i_keeps_a_lone_dot() {
    let s = host("");
    let out = s.sendmail(
        &["-i", "-f", "robot@satchel.test", "-F", "The Robot", "alice"],
        b"Subject: dots\n\nbefore\n.\nafter\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = one_message(&s, "alice");
    assert!(m.starts_with("Return-Path: <robot@satchel.test>\n"), "{m}");
    assert!(
        m.contains("From: \"The Robot\" <robot@satchel.test>\n"),
        "{m}"
    );
    assert!(m.ends_with("before\n.\nafter\n"), "{m:?}");
}

#[test]
fn without_i_a_lone_dot_ends_the_message() {
    let s = host("");
    let out = s.sendmail(&["bob"], b"Subject: dot\n\nkept\n.\nnot kept\n");
    assert!(out.status.success());
    let m = one_message(&s, "bob");
    assert!(m.ends_with("kept\n") && !m.contains("not kept"), "{m:?}");
}

#[test]
fn bad_addresses_exit_65_or_67_with_one_clear_line() {
    let s = host("");
    let out = s.sendmail(&["bad address@@x"], b"x\n");
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad address syntax"), "{err}");
    let out = s.sendmail(&["nosuchuser@satchel.test"], b"x\n");
    assert_eq!(out.status.code(), Some(67));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("<nosuchuser@satchel.test>: user unknown")
    );
    let out = s.sendmail(&["-Z"], b"");
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
    let out = s.sendmail(&["-i", "admin@remote.test"], b"the nightly job finished\n");
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
fn sendmail_refuses_a_message_over_the_size_limit_at_once() {
    let s = host("message_size_limit = 1024\ndefer_delivery = yes\n");
    let body = format!("Subject: big\n\n{}\n", "x".repeat(2000));
    let out = s.sendmail(&["bob@satchel.test"], body.as_bytes());
    assert_eq!(out.status.code(), Some(65), "EX_DATAERR");
    assert!(String::from_utf8_lossy(&out.stderr).contains("message too big"));
    assert!(s.queued().is_empty());
}

#[test]
fn sendmail_with_an_unknown_local_recipient_still_delivers_to_the_rest() {
    let s = host("");
    let out = s.sendmail(&["bob", "nosuchuser"], b"Subject: list\n\nhi\n");
    // sysexits' 67 and one line for the unknown one, as sendmail says it;
    // the message still goes to the rest.
    assert_eq!(out.status.code(), Some(67));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "sendmail: <nosuchuser@satchel.test>: user unknown"
    );
    s.wait_for("bob's copy", || s.maildir("bob").len() == 1);
}

#[test]
fn mailq_counts_what_waits_in_the_maildrop() {
    let s = Server::prepare_at([127, 0, 0, 1], free_port(), "");
    fs::create_dir_all(s.spool()).unwrap();
    satchel::spool::maildrop::prepare(&s.spool()).unwrap();
    let from = satchel::address::ReversePath::parse("<a@b.test>").unwrap();
    let to = vec![satchel::address::ForwardPath::parse("<c@d.test>").unwrap()];
    let msg = b"Subject: x\r\n\r\nx\r\n";
    let env = satchel::envelope::Envelope::local(from, to, "", 0, msg);
    satchel::spool::maildrop::submit(&s.spool(), &env, msg).unwrap();
    let out = s.run(&["queue", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("-- 1 submission(s) in maildrop/, not picked up yet\n"),
        "{text}"
    );
}

#[test]
fn sendmail_bs_speaks_smtp_on_stdin() {
    let s = host("");
    let out = s.sendmail(&["-bs"],
        b"EHLO local\r\nMAIL FROM:<alice@satchel.test>\r\nRCPT TO:<bob@satchel.test>\r\nDATA\r\nSubject: bs\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("220 mx.satchel.test ESMTP"), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as "), "{text}");
    assert!(text.ends_with("221 2.0.0 Bye\r\n"), "{text}");
    let m = one_message(&s, "bob");
    assert!(m.contains("Received: from local (localhost)\n"), "{m}");
}

/// `satchel inetd` on one end of a socket pair (socat's EXEC without
/// `nofork`), with `env` set; the replies to a session relaying to a remote
/// domain.
fn inetd_on_a_socket_pair(s: &Server, env: &[(&str, &str)]) -> String {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let mut cmd = Command::new(BIN);
    cmd.args(["inetd", "-c"])
        .arg(&s.conf)
        .env_remove("TCPREMOTEIP")
        .env_remove("SOCAT_PEERADDR")
        .env_remove("REMOTE_HOST")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(
            theirs.try_clone().expect("dup"),
        )))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("inetd");
    (&ours)
        .write_all(
            b"HELO far\r\nMAIL FROM:<x@far.test>\r\nRCPT TO:<someone@elsewhere.test>\r\nQUIT\r\n",
        )
        .expect("write");
    let mut text = String::new();
    for l in BufReader::new(&ours).lines() {
        let l = l.expect("read");
        text.push_str(&l);
        text.push('\n');
        if l.starts_with("221") {
            break;
        }
    }
    child.wait().expect("wait");
    text
}

#[test]
fn inetd_mode_with_a_client_it_cannot_name_is_no_open_relay() {
    let s = host("relay_networks = 127.0.0.0/8\n");
    let text = inetd_on_a_socket_pair(&s, &[]);
    assert!(
        text.contains("554 5.7.1 <someone@elsewhere.test>: Relay access denied"),
        "{text}"
    );
    // The super-server's word for the address counts: a trusted network
    // may relay, as over TCP.
    let text = inetd_on_a_socket_pair(&s, &[("SOCAT_PEERADDR", "127.0.0.1")]);
    assert!(text.contains("250 2.1.5"), "{text}");
    let text = inetd_on_a_socket_pair(&s, &[("REMOTE_HOST", "192.0.2.7")]);
    assert!(text.contains("554 5.7.1"), "{text}");
    // sendmail -bs is a program on this host: it may relay.
    let out = s.sendmail(&["-bs"],
        b"HELO local\r\nMAIL FROM:<alice@satchel.test>\r\nRCPT TO:<someone@elsewhere.test>\r\nQUIT\r\n",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("250 2.1.5"));
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
fn install_links_creates_the_three_links() {
    let dir = TempDir::new("install");
    let out = Command::new(BIN)
        .arg("install-links")
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success());
    for name in ["sendmail", "mailq", "newaliases"] {
        let target = fs::read_link(dir.0.join(name)).unwrap();
        assert_eq!(
            fs::canonicalize(target).unwrap(),
            fs::canonicalize(BIN).unwrap()
        );
    }
}

#[test]
fn mailq_and_newaliases_links_work() {
    let s = host("defer_delivery = yes\n");
    fs::write(s.dir.0.join("aliases"), "postmaster: alice\n").unwrap();
    let out = s.sendmail(&["alice"], b"Subject: q\n\nx\n");
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
    assert!(String::from_utf8_lossy(&q.stdout).contains("alice@satchel.test (pending, via local)"));
    let n = run(&link("newaliases"));
    assert!(n.status.success());
    assert!(String::from_utf8_lossy(&n.stdout).contains("1 aliases"));
}

fn rcpt_code(s: &Server, rcpt: &str) -> u16 {
    let mut c = common::Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    c.cmd(&format!("RCPT TO:<{rcpt}>")).0
}

#[test]
fn sighup_adds_a_local_user_and_a_broken_config_keeps_the_old_one() {
    let s = Server::start("");
    let mut c = common::Client::connect(s.addr()); // a session open across the reloads
    c.hello();
    assert_eq!(rcpt_code(&s, "dave@satchel.test"), 550);
    let text = fs::read_to_string(&s.conf)
        .unwrap()
        .replace("local_users = alice, bob", "local_users = alice, bob, dave");
    fs::write(&s.conf, &text).unwrap();
    s.signal("HUP");
    s.wait_for("the reload", || {
        s.log().contains("reloaded the configuration and aliases")
    });
    assert_eq!(
        rcpt_code(&s, "dave@satchel.test"),
        250,
        "accepted without a restart"
    );
    fs::write(&s.conf, format!("{text}max_connections = lots\n")).unwrap();
    s.signal("HUP");
    s.wait_for("the refusal", || {
        s.log().contains("reload refused, keeping the old settings")
    });
    assert!(
        s.log().contains(":max_connections") || s.log().contains("bad value for max_connections"),
        "{}",
        s.log()
    );
    assert_eq!(
        rcpt_code(&s, "dave@satchel.test"),
        250,
        "still serving with the last good settings"
    );
    assert_eq!(c.cmd("NOOP").0, 250, "the old session was not dropped");
}

#[test]
fn hold_keeps_a_message_from_delivery_and_release_lets_it_go() {
    let port = free_port();
    let remote = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    // Queue with delivery deferred, hold it, then start a delivering server.
    let mut s = Server::start(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let mut c = common::Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "alice@satchel.test",
        &["x@remote.test"],
        b"Subject: held\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    let id = common::queue_id(&text);
    let out = s.run(&["queue", "hold", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&s.run(&["queue", "list"]).stdout).into_owned();
    assert!(
        list.contains(&format!("{id}!")),
        "held messages are marked: {list}"
    );
    let json = String::from_utf8_lossy(&s.run(&["queue", "list", "--json"]).stdout).into_owned();
    assert!(
        json.contains(&format!("\"queue_id\":\"{id}\",\"queue_name\":\"hold\"")),
        "{json}"
    );
    let show = String::from_utf8_lossy(&s.run(&["queue", "show", &id]).stdout).into_owned();
    assert!(
        show.contains("from <alice@satchel.test>") && show.contains("Subject: held"),
        "{show}"
    );
    // The envelope as stored, then the headers.
    assert!(
        show.starts_with("*** ENVELOPE (hold) ***\nversion 2\n")
            && show.contains("\ndata 2048\nend\n*** HEADERS ***\n"),
        "{show}"
    );
    s.kill9();
    let text = fs::read_to_string(&s.conf)
        .unwrap()
        .replace("defer_delivery = yes", "defer_delivery = no");
    fs::write(&s.conf, text).unwrap();
    s.spawn();
    let flush = s.run(&["queue", "flush"]);
    assert!(flush.status.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        remote.received().is_empty(),
        "a held message is not delivered"
    );
    assert!(s.run(&["queue", "release", &id]).status.success());
    s.wait_for("delivery after release", || remote.received().len() == 1);
}

#[test]
fn delete_all_empties_the_queue_and_flush_delivers_deferred_mail_at_once() {
    let s = Server::start("");
    for i in 0..3 {
        let mut c = common::Client::connect(s.addr());
        c.hello();
        assert_eq!(
            c.mail(
                "a@example.org",
                &["alice@satchel.test"],
                format!("Subject: {i}\r\n\r\nx\r\n").as_bytes()
            )
            .0,
            250
        );
    }
    assert_eq!(s.queued().len(), 3);
    let out = s.run(&["queue", "delete", "ALL"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 message(s) deleted"));
    assert!(s.queued().is_empty());
    assert_eq!(fs::read_dir(s.spool().join("hold")).unwrap().count(), 0);
    assert_eq!(s.partial(), 0);
}

#[test]
fn serve_writes_and_removes_its_pid_file() {
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "");
    let pid = s.dir.0.join("satchel.pid");
    s.spawn_with(&["-p", pid.to_str().unwrap()]);
    let child_pid = s.child.as_ref().unwrap().id();
    assert_eq!(
        fs::read_to_string(&pid).unwrap().trim(),
        child_pid.to_string()
    );
    s.signal("TERM");
    assert_eq!(s.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    assert!(!pid.exists());
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `Uid:`/`Gid:` lines of /proc/PID/status: (real, effective, saved, fs).
fn ids(pid: u32, key: &str) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap()
        .to_string();
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn started_as_root_the_server_becomes_the_configured_user() {
    if !running_as_root() {
        println!("skipped: privilege drop needs the tests to run as root");
        return;
    }
    let Some((uid, gid)) = satchel::os::lookup_user("nobody") else {
        println!("skipped: no 'nobody' account");
        return;
    };
    let s = Server::start("user = nobody\ndefer_delivery = no\n");
    let pid = s.child.as_ref().unwrap().id();
    s.wait_for("the drop", || s.log().contains("running as nobody"));
    assert_eq!(ids(pid, "Uid:"), vec![uid; 4]);
    assert_eq!(ids(pid, "Gid:"), vec![gid; 4]);
    // It still works: the spool and mailboxes were handed over.
    let mut c = common::Client::connect(s.addr());
    c.hello();
    assert_eq!(
        c.mail(
            "a@example.org",
            &["alice@satchel.test"],
            b"Subject: dropped\r\n\r\nx\r\n"
        )
        .0,
        250
    );
    s.wait_for("delivery as nobody", || s.maildir("alice").len() == 1);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&s.maildir("alice")[0]).unwrap().uid(),
        uid,
        "mailboxes are owned by the service user"
    );
}

#[test]
fn the_hand_over_to_the_service_user_follows_no_link_and_leaves_maildrop_alone() {
    if !running_as_root() {
        println!("skipped: the hand-over needs the tests to run as root");
        return;
    }
    let Some((uid, _)) = satchel::os::lookup_user("nobody") else {
        println!("skipped: no 'nobody' account");
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "user = nobody\n");
    // What a local user could put in the world-writable maildrop/: a link
    // to a file of root's, and a submission of their own (uid 12345).
    let victim = s.dir.0.join("victim");
    fs::write(&victim, b"root's").unwrap();
    let maildrop = s.spool().join("maildrop");
    fs::create_dir_all(&maildrop).unwrap();
    std::os::unix::fs::symlink(&victim, maildrop.join("evil")).unwrap();
    let theirs = maildrop.join("1.2.3");
    fs::write(&theirs, b"").unwrap();
    std::os::unix::fs::chown(&theirs, Some(12345), Some(12345)).unwrap();
    // And a queue directory root made, which the service user must get.
    let queue = s.spool().join("queue");
    fs::create_dir_all(&queue).unwrap();
    s.spawn();
    s.wait_for("the drop", || s.log().contains("running as nobody"));
    assert_eq!(
        fs::metadata(&victim).unwrap().uid(),
        0,
        "a link was followed"
    );
    assert_eq!(fs::symlink_metadata(&theirs).unwrap().uid(), 12345);
    assert_eq!(fs::metadata(&queue).unwrap().uid(), uid);
}

#[test]
fn roots_sendmail_queues_as_the_service_user_so_the_daemon_can_record_a_deferral() {
    if !running_as_root() {
        println!("skipped: needs the tests to run as root");
        return;
    }
    let Some((uid, _)) = satchel::os::lookup_user("nobody") else {
        println!("skipped: no 'nobody' account");
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let port = free_port();
    let _remote = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "451 4.3.0 try again later".into()),
    );
    let s = Server::start(&format!(
        "user = nobody\ndefer_delivery = no\nrelayhost = [127.0.0.1]:{port}\nmin_backoff = 1h\n"
    ));
    s.wait_for("the drop", || s.log().contains("running as nobody"));
    let out = s.sendmail(&["x@remote.test"], b"Subject: from cron\n\nhi\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_for("the deferral written down", || {
        s.queued()
            .first()
            .is_some_and(|id| s.envelope(id).contains("rcpt deferred <x@remote.test>"))
    });
    let id = s.queued()[0].clone();
    assert_eq!(
        fs::metadata(s.spool().join("queue").join(&id))
            .unwrap()
            .uid(),
        uid
    );
    assert!(!s.log().contains("cannot"), "{}", s.log());
    let m = String::from_utf8_lossy(&s.message(&id)).into_owned();
    assert!(m.contains("(satchel, from userid 0)"), "{m}");
}

#[test]
fn root_without_user_may_not_take_a_privileged_port() {
    if !running_as_root() {
        println!("skipped: needs root");
        return;
    }
    let s = Server::prepare_at([127, 0, 0, 1], 25, "");
    let out = s.run(&["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set `user = satchel`"), "{err}");
}

/// A server running as nobody, and `sendmail ARG` with `input` run by uid
/// 12345 (no account, no rights on the spool); `None` when the tests
/// cannot act as an ordinary user (not root, or no setpriv).
fn as_ordinary_user(arg: &str, input: &[u8]) -> Option<(Server, Output)> {
    if !running_as_root() || Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: needs root and setpriv to act as an ordinary user");
        return None;
    }
    let s = Server::start("user = nobody\ndefer_delivery = no\nlocal_users = alice, bob, carol\n");
    s.wait_for("the drop", || s.log().contains("running as nobody"));
    let link = s.dir.0.join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid=12345", "--regid=12345", "--clear-groups", "--"])
        .arg(&link)
        .arg(arg)
        .env("SATCHEL_CONFIG", &s.conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    Some((s, out))
}

#[test]
fn an_ordinary_users_sendmail_bs_goes_through_the_maildrop() {
    // Symfony Mailer's way: SMTP on stdin/stdout.
    let Some((s, out)) = as_ordinary_user(
        "-bs",
        b"EHLO app\r\nMAIL FROM:<app@satchel.test>\r\nRCPT TO:<carol@satchel.test>\r\nDATA\r\nSubject: via -bs\r\n\r\nhello\r\n.\r\nQUIT\r\n",
    ) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("250 2.0.0 Ok: queued as "), "{text}");
    let m = one_message(&s, "carol");
    assert!(m.contains("Subject: via -bs"), "{m}");
    assert!(m.contains("(satchel, from userid 12345)"), "{m}");
}

#[test]
fn an_ordinary_user_submits_through_the_maildrop() {
    let Some((s, out)) = as_ordinary_user("carol", b"Subject: from a user\n\nhello\n") else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = one_message(&s, "carol");
    assert!(
        m.contains("Received: by mx.satchel.test (satchel, from userid 12345)"),
        "{m}"
    );
    assert!(m.contains("Subject: from a user"));
    assert!(s.log().contains("(picked up from maildrop)"));
    let mode = fs::metadata(s.spool().join("maildrop")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o7777, 0o1733);
    // A forged file is refused and kept aside, never queued.
    fs::write(
        s.spool().join("maildrop").join("forged"),
        "satchel-maildrop 1\nfrom <a@b.test>\nrcpt <\"../x\">\nend\nx\r\n",
    )
    .unwrap();
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("the forged file set aside", || {
        s.spool().join("corrupt").join("maildrop.forged").exists()
    });
    assert!(s.queued().is_empty());
}

#[test]
fn queue_check_reports_in_nagios_terms() {
    let s = host("defer_delivery = yes\n");
    let check = |args: &[&str]| {
        let mut all = vec!["queue", "check"];
        all.extend_from_slice(args);
        let out = s.run(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, line) = check(&["--max-count", "2"]);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("SATCHEL QUEUE OK - 0 message(s) |"),
        "{line}"
    );
    for n in 0..3 {
        let out = s.sendmail(&["alice"], format!("Subject: {n}\n\nx\n").as_bytes());
        assert!(out.status.success());
    }
    let (code, line) = check(&["--max-count", "2"]);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("SATCHEL QUEUE CRITICAL - 3 message(s), oldest "),
        "{line}"
    );
    assert!(
        line.contains(": more than 2 messages | messages=3 held=0 damaged=0 oldest_age="),
        "{line}"
    );
    assert_eq!(check(&["--max-count", "5"]).0, Some(1));
    assert_eq!(check(&["--max-count", "10", "--max-age", "1h"]).0, Some(0));
    let (code, line) = check(&["--max-age", "soon"]);
    assert_eq!(code, Some(3), "{line}");
    assert!(
        line.starts_with("SATCHEL QUEUE UNKNOWN - --max-age"),
        "{line}"
    );
}

#[test]
fn a_spool_short_of_room_refuses_new_mail_and_keeps_what_it_has() {
    // More free space than any disk has: everything new is refused.
    let mut s = host("defer_delivery = yes\nqueue_min_free = 1000000G\n");
    s.spawn();
    let mut c = common::Client::connect(s.addr());
    c.hello();
    let (code, text) = c.cmd("MAIL FROM:<a@example.org>");
    assert_eq!(
        (code, text.as_str()),
        (452, "4.3.1 Insufficient system storage")
    );
    let out = s.sendmail(&["alice"], b"Subject: no room\n\nx\n");
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("under queue_min_free"));
    assert!(
        s.log().contains("warning: no room for new mail: "),
        "{}",
        s.log()
    );
    // A byte budget: the first message fits, the next waits for room.
    let mut t = host("defer_delivery = yes\nqueue_max_bytes = 100\n");
    t.spawn();
    let first = t.sendmail(&["alice"], b"Subject: first\n\nx\n");
    assert!(first.status.success());
    // (The daemon counts the spool at its first MAIL.)
    let mut c = common::Client::connect(t.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 452);
    assert_eq!(t.queued().len(), 1, "what was queued stays");
}

#[test]
fn check_config_shows_the_absolute_paths_in_force() {
    let dir = TempDir::new("layout");
    let conf = dir.0.join("satchel.conf");
    fs::write(&conf, "spool_dir = queue-here\nmail_dir = ../boxes\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&conf)
        .current_dir("/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let base = dir.0.display();
    assert!(
        text.contains(&format!("\nspool_dir = {base}/queue-here\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("\nmail_dir = {base}/../boxes\n")),
        "{text}"
    );
    // Unset paths: the working directory's, shown absolute.
    assert!(
        text.contains("\naliases_file = /etc/aliases\n")
            || text.contains("\naliases_file = /./etc/aliases\n"),
        "{text}"
    );
}
