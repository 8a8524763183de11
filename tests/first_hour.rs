//! What a user of Postfix or sendmail meets in the first hour: the
//! sendmail command called with sendmail's whole option set, errors that
//! say what to do, the queue verbs and what they log, read-only commands
//! that change nothing.

mod common;

use common::fake::FakeSmtp;
use common::{free_port, Server, TempDir, BIN};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output};
use std::time::Duration;

/// A host whose syslog lines (inetd, sendmail, the queue verbs) arrive
/// on a socket of the test's own.
struct Host {
    s: Server,
    syslog: UnixDatagram,
}

impl Host {
    fn new(extra: &str) -> Host {
        let dir = TempDir::new("syslog");
        let path = dir.0.join("log.sock");
        let syslog = UnixDatagram::bind(&path).expect("bind syslog socket");
        syslog
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let s = Server::prepare_at(
            [127, 0, 0, 1],
            free_port(),
            &format!("syslog_socket = {}\n{extra}", path.display()),
        );
        // The socket's directory lives as long as the server's.
        std::mem::forget(dir);
        Host { s, syslog }
    }

    /// Every syslog line that has arrived so far.
    fn syslog_lines(&self) -> String {
        let mut all = String::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.syslog.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            all.push('\n');
        }
        all
    }

    /// `satchel ARGS -c CONF`.
    fn run(&self, args: &[&str]) -> Output {
        self.s.run(args)
    }

    /// `sendmail ARGS` with `input` on stdin.
    fn sendmail(&self, args: &[&str], input: &[u8]) -> Output {
        self.s.sendmail(args, input)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn sendmail_takes_the_values_of_its_options_instead_of_mailing_them() {
    let h = Host::new("defer_delivery = no\n");
    let out = h.sendmail(
        &[
            "-O",
            "DeliveryMode=b",
            "-h",
            "10",
            "-oem",
            "-odb",
            "-oi",
            "-B8BITMIME",
            "-G",
            "-Am",
            "-U",
            "-n",
            "-m",
            "-em",
            "-L",
            "cron",
            "-p",
            "local",
            "alice",
        ],
        b"Subject: from cron\n\nthe job ran\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no warning on every cron run");
    h.s.wait_for("alice's copy", || h.s.maildir("alice").len() == 1);
    assert!(h.s.maildir("bob").is_empty());
    // Delivery notices (RFC 3461): bob's copy, and a success notice for
    // the sender, with the envelope ID given.
    let out = h.sendmail(
        &["-f", "alice", "-N", "success", "-V", "cron 7", "bob"],
        b"Subject: dsn\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
    h.s.wait_for("bob's copy", || h.s.maildir("bob").len() == 1);
    h.s.wait_for("the notice to alice", || h.s.maildir("alice").len() == 2);
    let notice = std::fs::read_to_string(&h.s.maildir("alice")[1]).unwrap();
    assert!(
        notice.contains("Original-Envelope-Id: cron 7\n") && notice.contains("Action: delivered\n"),
        "{notice}"
    );
}

#[test]
fn sendmail_help_and_the_version_are_there() {
    let h = Host::new("");
    let out = h.sendmail(&["--help"], b"");
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.starts_with("usage: sendmail [options]"), "{help}");
    assert!(help.contains("-bs") && help.contains("mailq"), "{help}");
    let out = h.sendmail(&["-bV"], b"");
    assert!(
        text(&out.stdout).starts_with("satchel "),
        "{}",
        text(&out.stdout)
    );
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).split(' ').take(2).collect::<Vec<_>>(),
        ["satchel", env!("CARGO_PKG_VERSION")]
    );
}

#[test]
fn an_unknown_command_names_itself_and_the_usage_lists_every_name() {
    let out = Command::new(BIN).arg("sever").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("satchel: unknown command 'sever' (did you mean 'serve'?)\n"),
        "{err}"
    );
    for name in [
        "serve",
        "inetd",
        "check-config",
        "queue list",
        "queue run",
        "queue flush",
        "hold",
        "release",
        "delete",
        "install-links",
        "sendmail",
        "mailq",
        "newaliases",
    ] {
        assert!(err.contains(name), "usage lacks {name}:\n{err}");
    }
}

#[test]
fn an_unknown_setting_suggests_the_closest_known_one() {
    let h = Host::new("hostnmae = mx.example\n");
    let out = h.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).ends_with("unknown setting 'hostnmae' (did you mean 'hostname'?)\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_finds_unreadable_tables_and_directories_the_user_cannot_write() {
    let h = Host::new("auth_users_file = /nonexistent/users\n");
    let out = h.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/users: cannot read"),
        "{}",
        text(&out.stderr)
    );
    if satchel::os::euid() != 0 {
        return; // the rest needs another account's directory
    }
    // A spool that `nobody`, the service user, cannot write: owned by
    // another account (root's would be handed over at start).
    let h = Host::new("user = nobody\n");
    let queue = h.s.spool().join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    std::os::unix::fs::chown(&queue, Some(1), Some(1)).unwrap();
    let out = h.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "spool_dir: {}: not writable by nobody",
            queue.display()
        )),
        "{err}"
    );
    assert!(err.contains("owned by uid 1 gid 1 with mode 0755"), "{err}");
    // `queue run` as root stops at the same line instead of failing later.
    let out = h.run(&["queue", "run"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/queue: not writable by nobody"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn read_only_commands_create_nothing_and_say_which_spool_they_read() {
    let h = Host::new("");
    for args in [
        &["queue", "list"][..],
        &["queue", "list", "--json"],
        &["check-config"],
    ] {
        let out = h.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!h.s.spool().exists(), "{args:?} made the spool");
    }
    let out = h.sendmail(&["-bp"], b"");
    assert_eq!(text(&out.stdout), "Mail queue is empty\n");
    assert!(!h.s.spool().exists(), "mailq made the spool");
    // Without any configuration file: the defaults, relative to here.
    let cwd = TempDir::new("noconf");
    if std::path::Path::new(satchel::config::SYSTEM_CONFIG).exists() {
        return;
    }
    let out = Command::new(BIN)
        .args(["queue", "list"])
        .current_dir(&cwd.0)
        .env_remove("SATCHEL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = text(&out.stderr);
    let spool = cwd.0.join("var/spool");
    assert!(err.contains(&format!("spool {}", spool.display())), "{err}");
    assert!(!cwd.0.join("var").exists(), "queue list made ./var");
}

/// A server whose relayhost is down: a message sent to it is deferred
/// (next attempt after min_backoff, five minutes).
fn deferring(port: u16) -> (Host, String) {
    let mut h = Host::new(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{port}\nconnect_timeout = 1s\n"
    ));
    h.s.spawn();
    let mut c = common::Client::connect(h.s.addr());
    c.hello();
    let (code, t) = c.mail(
        "alice@satchel.test",
        &["x@remote.test"],
        b"Subject: later\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    let id = common::queue_id(&t);
    h.s.wait_for("the deferral", || {
        h.s.log().contains(&format!("{id}: to=<x@remote.test>")) && h.s.queued() == [id.clone()]
    });
    (h, id)
}

#[test]
fn queue_verbs_say_and_log_what_they_did_and_a_release_is_due_at_once() {
    let port = free_port();
    let (h, id) = deferring(port);
    let out = h.run(&["queue", "hold", &id]);
    assert_eq!(text(&out.stdout), format!("{id}: placed on hold\n"));
    let out = h.run(&["queue", "hold", &id]);
    assert!(out.status.success(), "holding a held message is no error");
    assert_eq!(text(&out.stdout), format!("{id}: already on hold\n"));
    // A flush tries only what waits: the held message is not counted.
    let out = h.run(&["queue", "flush"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("0 waiting message(s)"),
        "{}",
        text(&out.stdout)
    );
    h.s.wait_for("the flush", || {
        h.s.log().contains("flush: 0 queued message(s) due now")
    });
    // The relayhost is back; the release makes the message due now, not
    // at its planned attempt minutes away.
    let remote = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    let out = h.run(&["queue", "release", &id]);
    assert_eq!(text(&out.stdout), format!("{id}: released from hold\n"));
    h.s.wait_for("delivery after the release", || {
        remote.received().len() == 1
    });
    let log = h.syslog_lines();
    for line in [
        format!("{id}: placed on hold"),
        "queue flush requested: 0 waiting message(s)".into(),
        format!("{id}: released from hold"),
    ] {
        assert!(log.contains(&line), "no '{line}' in syslog:\n{log}");
    }
}

#[test]
fn delete_takes_all_in_any_case_and_logs_it() {
    let mut h = Host::new("");
    h.s.spawn();
    for i in 0..2 {
        let mut c = common::Client::connect(h.s.addr());
        c.hello();
        let body = format!("Subject: {i}\r\n\r\nx\r\n");
        let (code, t) = c.mail("a@example.org", &["alice@satchel.test"], body.as_bytes());
        assert_eq!(code, 250);
        if i == 0 {
            let id = common::queue_id(&t);
            let out = h.run(&["queue", "delete", &id]);
            assert_eq!(text(&out.stdout), format!("{id}: removed\n"));
            assert!(h.syslog_lines().contains(&format!("{id}: removed")));
        }
    }
    let out = h.run(&["queue", "delete", "all"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1 message(s) deleted"));
    assert!(h.s.queued().is_empty());
    assert!(h
        .syslog_lines()
        .contains("queue delete ALL: 1 message(s) deleted"));
}

#[test]
fn sendmail_q_asks_the_running_server_to_flush() {
    let (h, id) = deferring(free_port());
    let out = h.sendmail(&["-q"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    h.s.wait_for("the daemon's flush", || {
        h.s.log().contains("flush: 1 queued message(s) due now")
    });
    // Tried again at once, not at its planned attempt minutes away.
    h.s.wait_for("the second attempt", || {
        h.s.log()
            .matches(&format!("{id}: to=<x@remote.test>"))
            .count()
            == 2
    });
}

#[test]
fn every_submission_logs_sender_size_and_recipients() {
    let h = Host::new("");
    let out = h.sendmail(&["alice"], b"Subject: cron\n\nx\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = h.syslog_lines();
    let line = log
        .lines()
        .find(|l| l.contains("(queue active)"))
        .unwrap_or_else(|| panic!("no submission line in syslog:\n{log}"));
    assert!(line.starts_with("<22>satchel["), "{line}");
    assert!(
        line.contains(" from=<") && line.contains(", size=") && line.contains(", nrcpt=1 "),
        "{line}"
    );
}

#[test]
fn a_credential_sent_in_an_auth_exchange_never_reaches_the_log() {
    let users = TempDir::new("creds");
    let hash = Command::new("openssl")
        .args(["passwd", "-6", "s3cret"])
        .output()
        .expect("openssl");
    let file = users.0.join("users");
    std::fs::write(&file, format!("carol:{}", text(&hash.stdout))).unwrap();
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "auth_users_file = {}\nauth_over_plaintext = yes\n",
            file.display()
        ),
    );
    s.spawn();
    let b64 = |t: &str| satchel::smtp::base64::encode(t.as_bytes());
    let mut c = common::Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("AUTH LOGIN").0, 334);
    assert_eq!(c.cmd(&b64("carol")).0, 334);
    assert_eq!(c.cmd(&b64("wrong")).0, 535);
    assert_eq!(c.cmd("AUTH PLAIN").0, 334);
    assert_eq!(c.cmd(&b64("\0carol\0wrong2")).0, 535);
    s.wait_for("both failures logged", || {
        s.log().contains("AUTH failed (2 so far)")
    });
    let log = s.log().to_uppercase();
    for secret in [b64("wrong"), b64("\0carol\0wrong2")] {
        // Not even upper-cased, as a rejected command's verb is logged.
        assert!(
            !log.contains(&secret.to_uppercase()[..8]),
            "{secret} in the log:\n{}",
            s.log()
        );
    }
    assert!(
        s.log().contains("reject: AUTH from [127.0.0.1]: 535 5.7.8"),
        "{}",
        s.log()
    );
}
