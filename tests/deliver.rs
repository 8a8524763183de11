//! The delivering half, hermetic: satchel processes on 127.0.0.x loopback
//! addresses as separate hosts, a DNS server of the tests' own on loopback,
//! scripted remote SMTP servers, Maildirs read back by Python's `mailbox`.

mod common;

use common::dns::TestDns;
use common::fake::{FakeSmtp, Fault};
use common::{free_port, queue_id, shared_port, Client, Server};
use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn body(subject: &str) -> Vec<u8> {
    format!("From: someone\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nHello, {subject}.\r\n").into_bytes()
}

/// Sends one message; returns its queue ID.
fn send(s: &Server, from: &str, to: &[&str], subject: &str) -> String {
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(from, to, &body(subject));
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    queue_id(&text)
}

fn python(script: &str, arg: &std::path::Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(arg)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn delivering(extra: &str) -> Server {
    Server::start(&format!("defer_delivery = no\n{extra}"))
}

#[test]
fn a_message_queued_by_version_1_is_still_delivered() {
    // Before queue files, the envelope was alone in queue/ and the message
    // in msg/. Mail queued then must not be lost by an upgrade.
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "defer_delivery = no\n");
    let id = "0005F3A1B2C3D4E5";
    let msg = b"Received: by old\r\nSubject: from version 1\r\n\r\nstill here\r\n";
    for d in ["queue", "msg"] {
        fs::create_dir_all(s.spool().join(d)).unwrap();
    }
    fs::write(s.spool().join("msg").join(id), msg).unwrap();
    fs::write(
        s.spool().join("queue").join(id),
        format!(
            "version 1\nid {id}\ncreated 1795917257\nclient 127.0.0.1\nhelo old\nprotocol ESMTP\n\
             body 7BIT\nsmtputf8 no\nsize {}\nfrom <a@example.org>\nattempts 0\nnext-attempt 0\n\
             rcpt pending <alice@satchel.test>\nend\n",
            msg.len()
        ),
    )
    .unwrap();
    s.spawn();
    s.wait_for("delivery to alice", || {
        s.maildir("alice").len() == 1 && s.log().contains(&format!("{id}: removed"))
    });
    let bytes = fs::read(&s.maildir("alice")[0]).unwrap();
    assert!(
        bytes.ends_with(b"Received: by old\nSubject: from version 1\n\nstill here\n"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        !s.spool().join("msg").join(id).exists(),
        "its message file is gone too"
    );
}

#[test]
fn local_mail_lands_in_maildir_with_return_path_and_python_reads_it() {
    let s = delivering("");
    let id = send(&s, "a@example.org", &["alice@satchel.test"], "maildir");
    s.wait_for("delivery to alice", || {
        s.maildir("alice").len() == 1 && s.queued().is_empty()
    });
    let bytes = fs::read(&s.maildir("alice")[0]).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("Return-Path: <a@example.org>\nDelivered-To: alice@satchel.test\nReceived: from client.test"),
        "{text}"
    );
    assert!(text.ends_with("Hello, maildir.\n"));
    // The local convention, as mutt and grep expect: `grep -c $'\r$'` is 0.
    assert_eq!(text.matches("\r\n").count(), 0, "{text:?}");
    assert!(text.lines().any(|l| l == "Subject: maildir"), "{text}");
    let out = python(
        "import mailbox,sys\nm=list(mailbox.Maildir(sys.argv[1], factory=None))\nprint(len(m), m[0]['Subject'], m[0]['Return-Path'])",
        &s.mail_dir().join("alice"),
    );
    assert_eq!(out.trim(), "1 maildir <a@example.org>");
    s.wait_for("removal log", || {
        s.log().contains(&format!("{id}: removed"))
    });
    assert!(s.log().contains(&format!(
        "{id}: to=<alice@satchel.test>, relay=local, delay="
    )));
    for dir in ["queue", "active"] {
        assert!(!s.spool().join(dir).join(&id).exists(), "gone from {dir}/");
    }
}

#[test]
fn mbox_delivery_is_read_back_by_python() {
    let s = delivering("mailbox_format = mbox\n");
    send(&s, "a@example.org", &["bob@satchel.test"], "first");
    send(&s, "", &["bob@satchel.test"], "second");
    let mbox = s.mail_dir().join("bob");
    s.wait_for("two messages in the mbox", || {
        fs::read_to_string(&mbox)
            .unwrap_or_default()
            .matches("\nSubject: ")
            .count()
            == 2
    });
    let out = python(
        "import mailbox,sys\nfor m in mailbox.mbox(sys.argv[1]): print(m['Subject'], m['Return-Path'])",
        &mbox,
    );
    assert_eq!(out, "first <a@example.org>\nsecond <>\n");
}

#[test]
fn mbox_delivery_waits_for_a_readers_fcntl_lock_and_a_dot_lock() {
    use std::io::{BufRead, BufReader, Write};
    let s = delivering("mailbox_format = mbox\n");
    let mbox = s.mail_dir().join("bob");
    fs::create_dir_all(s.mail_dir()).unwrap();
    // A mail reader holds the fcntl lock, as Dovecot or mutt would.
    let mut reader = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,os,sys\nf=open(sys.argv[1],'a+')\nfcntl.lockf(f,fcntl.LOCK_EX)\n\
             print('locked',flush=True)\nsys.stdin.readline()\n\
             print(os.path.getsize(sys.argv[1]),flush=True)\nfcntl.lockf(f,fcntl.LOCK_UN)",
        )
        .arg(&mbox)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "locked\n");
    send(&s, "a@example.org", &["bob@satchel.test"], "locked out");
    std::thread::sleep(Duration::from_secs(1));
    writeln!(reader.stdin.take().unwrap(), "release").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "0\n", "written while the reader held its lock");
    reader.wait().unwrap();
    let count = || {
        fs::read_to_string(&mbox)
            .unwrap_or_default()
            .matches("\nSubject: ")
            .count()
    };
    s.wait_for("the delivery once the lock is gone", || count() == 1);

    // A dot lock (bob.lock) holds delivery off the same way. satchel's own
    // lock of the first delivery goes just after the message is written:
    // the test's lock is made once it is gone (or that removal takes it).
    let dot = s.mail_dir().join("bob.lock");
    s.wait_for("the first delivery's dot lock removed", || !dot.exists());
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dot)
        .unwrap();
    send(&s, "a@example.org", &["bob@satchel.test"], "dot locked");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(), 1, "written under a dot lock");
    fs::remove_file(&dot).unwrap();
    s.wait_for("the second delivery", || count() == 2);
    s.wait_for("satchel's own dot lock removed", || !dot.exists());
}

#[test]
fn an_alias_reaches_a_local_and_a_remote_target() {
    let remote = FakeSmtp::start(
        "127.0.0.1:0".parse().unwrap(),
        Box::new(|_, _| "250 ok".into()),
    );
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "defer_delivery = no\nrelayhost = [127.0.0.1]:{}\n",
            remote.addr.port()
        ),
    );
    fs::write(
        s.dir.0.join("aliases"),
        "postmaster: alice\nstaff: bob, carol@remote.test\nloop1: loop2\nloop2: loop1\n",
    )
    .unwrap();
    s.spawn();
    send(
        &s,
        "a@example.org",
        &["staff@satchel.test", "postmaster@satchel.test"],
        "alias",
    );
    s.wait_for("bob's copy", || s.maildir("bob").len() == 1);
    s.wait_for("alice's copy (postmaster)", || {
        s.maildir("alice").len() == 1
    });
    s.wait_for("carol's copy at the remote", || {
        remote.received().len() == 1
    });
    let got = &remote.received()[0];
    assert_eq!(got.rcpts, vec!["carol@remote.test"]);
    assert_eq!(got.from, "<a@example.org>");
    let bob = fs::read_to_string(&s.maildir("bob")[0]).unwrap();
    assert!(bob.starts_with("Return-Path: <a@example.org>\nDelivered-To: bob@satchel.test\n"));
    // An alias loop bounces (to alice, the sender here).
    send(&s, "alice@satchel.test", &["loop1@satchel.test"], "loop");
    s.wait_for("the loop bounce", || s.maildir("alice").len() == 2);
    let bounce = s
        .maildir("alice")
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .find(|m| m.contains("Undelivered Mail"))
        .expect("a bounce");
    assert!(
        bounce.contains("Status: 5.4.6") && bounce.contains("alias loop"),
        "{bounce}"
    );
}

/// The seed's path: a message submitted to host A for user@dest.test; the
/// MX of dest.test is host B, which relays to its internal host C. On C the
/// message begins with Return-Path and one Received line per hop, newest first.
#[test]
fn a_mailbox_reached_through_several_recipients_gets_one_copy() {
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "defer_delivery = no\n");
    fs::write(s.dir.0.join("aliases"), "staff: alice, bob\n").unwrap();
    s.spawn();
    send(
        &s,
        "a@example.org",
        &[
            "staff@satchel.test",
            "bob@satchel.test",
            "Alice@satchel.test",
        ],
        "once",
    );
    s.wait_for("the message delivered and gone", || {
        s.queued().is_empty()
            && fs::read_dir(s.spool().join("active")).is_ok_and(|mut d| d.next().is_none())
            && s.log().contains(": removed")
    });
    assert_eq!(s.maildir("alice").len(), 1);
    assert_eq!(s.maildir("bob").len(), 1);
}

#[test]
fn a_message_delivered_here_before_is_a_loop_and_bounces() {
    let s = delivering("local_users = alice, bob, carol\n");
    let mut c = Client::connect(s.addr());
    c.hello();
    let looped = b"Delivered-To: bob@satchel.test\r\nSubject: again\r\n\r\nround and round\r\n";
    assert_eq!(
        c.mail(
            "alice@satchel.test",
            &["bob@satchel.test", "carol@satchel.test"],
            looped
        )
        .0,
        250
    );
    bounce_for(&s, 1);
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("Final-Recipient rfc822; bob@satchel.test\nAction failed\nStatus 5.4.6"),
        "{report}"
    );
    assert!(s.maildir("bob").is_empty());
    assert_eq!(
        s.maildir("carol").len(),
        1,
        "the other recipient still gets it"
    );
}

#[test]
fn an_alias_target_that_is_no_user_bounces() {
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "defer_delivery = no\n");
    fs::write(s.dir.0.join("aliases"), "staff: bob, bbo\n").unwrap();
    s.spawn();
    send(&s, "alice@satchel.test", &["staff@satchel.test"], "typo");
    s.wait_for("bob's copy", || s.maildir("bob").len() == 1);
    bounce_for(&s, 1);
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("Final-Recipient rfc822; bbo@satchel.test\nAction failed\nStatus 5.1.1"),
        "{report}"
    );
    assert!(
        !s.mail_dir().join("bbo").exists(),
        "a mailbox was made for a typo"
    );
}

#[test]
fn the_seeds_path_through_three_hosts_gives_the_classic_header() {
    let dns = TestDns::start();
    let (a_ip, b_ip, c_ip) = ([127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]);
    let port = shared_port(&[a_ip, b_ip, c_ip]);
    dns.mx("dest.test", 10, "mx.dest.test");
    dns.a("mx.dest.test", b_ip.into());
    let c = Server::start_at(c_ip, port, "hostname = c.dest.test\nlocal_domains = dest.test\nlocal_users = user\ndefer_delivery = no\n");
    let b = Server::start_at(
        b_ip,
        port,
        &format!(
            "hostname = mx.dest.test\nlocal_domains = mx.dest.test\nrelay_networks = 127.0.0.0/8\nrelayhost = [127.0.0.4]:{port}\ndefer_delivery = no\n"
        ),
    );
    let a = Server::start_at(
        a_ip,
        port,
        &format!(
            "hostname = a.origin.test\nlocal_domains = origin.test\nlocal_users = sender\nrelay_networks = 127.0.0.0/8\n\
             dns_servers = {}\nrelay_port = {port}\ndefer_delivery = no\n",
            dns.addr
        ),
    );
    send(&a, "sender@origin.test", &["user@dest.test"], "seed");
    c.wait_for("delivery on C", || c.maildir("user").len() == 1);
    let text = fs::read_to_string(&c.maildir("user")[0]).unwrap();
    let headers: Vec<&str> = text
        .split('\n')
        .filter(|l| !l.starts_with('\t'))
        .take_while(|l| !l.is_empty())
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        headers[..5],
        [
            "Return-Path:",
            "Delivered-To:",
            "Received:",
            "Received:",
            "Received:"
        ],
        "{text}"
    );
    assert!(text.starts_with("Return-Path: <sender@origin.test>\nDelivered-To: user@dest.test\n"));
    let hops: Vec<&str> = text.split("Received: from ").skip(1).collect();
    assert!(
        hops[0].contains("by c.dest.test (satchel)") && hops[0].starts_with("mx.dest.test "),
        "{}",
        hops[0]
    );
    assert!(
        hops[1].contains("by mx.dest.test (satchel)") && hops[1].starts_with("a.origin.test "),
        "{}",
        hops[1]
    );
    assert!(
        hops[2].contains("by a.origin.test (satchel)")
            && hops[2].starts_with("client.test ([127.0.0.1])"),
        "{}",
        hops[2]
    );
    assert!(text.ends_with("Hello, seed.\n"));
    drop((a, b));
}

/// d.test with two MX hosts, mx1 at 127.0.0.5 (preference 10) and mx2 at
/// 127.0.0.6 (20), on one port; the second answers 250. Returns the DNS
/// server, the port, a server delivering through that DNS, and mx2.
fn two_mx_hosts() -> (TestDns, u16, Server, FakeSmtp) {
    let dns = TestDns::start();
    let port = shared_port(&[[127, 0, 0, 5], [127, 0, 0, 6]]);
    let second = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 6], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    dns.mx("d.test", 10, "mx1.d.test");
    dns.mx("d.test", 20, "mx2.d.test");
    dns.a("mx1.d.test", [127, 0, 0, 5].into());
    dns.a("mx2.d.test", [127, 0, 0, 6].into());
    let s = delivering(&format!(
        "dns_servers = {}\nrelay_port = {port}\n",
        dns.addr
    ));
    (dns, port, s, second)
}

#[test]
fn the_best_mx_refuses_and_the_second_takes_it() {
    // Nothing listens at mx1.
    let (_dns, port, s, second) = two_mx_hosts();
    let id = send(&s, "a@satchel.test", &["x@d.test"], "fallback");
    s.wait_for("delivery via the second MX", || {
        second.received().len() == 1
    });
    s.wait_for("sent log", || {
        s.log().contains(&format!(
            "{id}: to=<x@d.test>, relay=mx2.d.test[127.0.0.6]:{port}"
        ))
    });
}

#[test]
fn no_reply_after_the_dot_defers_and_the_next_mx_does_not_get_a_copy() {
    let (_dns, port, s, second) = two_mx_hosts();
    let first = FakeSmtp::start_with(
        SocketAddr::from(([127, 0, 0, 5], port)),
        Box::new(|_, _| "250 ok".into()),
        Box::new(|n| {
            if n == 0 {
                Fault::DropAfterDot
            } else {
                Fault::None
            }
        }),
    );
    let id = send(&s, "a@satchel.test", &["x@d.test"], "once");
    s.wait_for("a deferral for the lost reply", || {
        s.queued() == vec![id.clone()] && s.log().contains("no reply after the end of the data")
    });
    assert_eq!(first.received().len(), 1);
    assert!(
        second.received().is_empty(),
        "the second MX got a copy at once"
    );
    // The next attempt goes to the best MX again, which answers this time.
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("delivery on retry", || {
        first.received().len() == 2 && s.queued().is_empty()
    });
    assert!(second.received().is_empty());
}

#[test]
fn a_reset_after_the_dot_means_not_taken_and_the_next_mx_gets_it() {
    let (_dns, port, s, second) = two_mx_hosts();
    let _first = FakeSmtp::start_with(
        SocketAddr::from(([127, 0, 0, 5], port)),
        Box::new(|_, _| "250 ok".into()),
        Box::new(|_| Fault::ResetAfterDot),
    );
    send(&s, "a@satchel.test", &["x@d.test"], "reset");
    s.wait_for("delivery through the second MX", || {
        second.received().len() == 1 && s.queued().is_empty()
    });
}

#[test]
fn a_250_to_data_is_no_delivery() {
    let port = free_port();
    let host = FakeSmtp::start_with(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
        Box::new(|_| Fault::DataIs250),
    );
    let s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let id = send(&s, "alice@satchel.test", &["x@remote.test"], "out of step");
    s.wait_for("a deferral", || {
        s.queued() == vec![id.clone()] && s.log().contains("unexpected reply to DATA")
    });
    assert!(!s.log().contains("status=sent"), "{}", s.log());
    assert!(host.received().is_empty());
}

#[test]
fn sighup_reads_the_dns_settings_again() {
    let old = TestDns::start(); // fails for d.test
    old.servfail("d.test", true);
    let new = TestDns::start();
    let port = free_port();
    let host = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 8], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    new.a("d.test", [127, 0, 0, 8].into());
    let s = delivering(&format!(
        "dns_servers = {}\nrelay_port = {port}\nmin_backoff = 1h\n",
        old.addr
    ));
    let id = send(&s, "a@satchel.test", &["x@d.test"], "new dns");
    s.wait_for("the first attempt", || {
        s.log().contains(&format!("{id}: to=<x@d.test>")) && s.queued() == vec![id.clone()]
    });
    let text = fs::read_to_string(&s.conf).unwrap().replace(
        &format!("dns_servers = {}", old.addr),
        &format!("dns_servers = {}", new.addr),
    );
    fs::write(&s.conf, text).unwrap();
    s.signal("HUP");
    s.wait_for("the reload", || {
        s.log().contains("reloaded the configuration")
    });
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("delivery through the new name server", || {
        host.received().len() == 1
    });
}

#[test]
fn a_domain_without_mx_gets_mail_at_its_own_address() {
    let dns = TestDns::start();
    let port = free_port();
    let host = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 7], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    dns.a("implicit.test", [127, 0, 0, 7].into());
    let s = delivering(&format!(
        "dns_servers = {}\nrelay_port = {port}\n",
        dns.addr
    ));
    send(&s, "a@satchel.test", &["x@implicit.test"], "implicit");
    s.wait_for("delivery to the implicit MX", || host.received().len() == 1);
}

fn bounce_for(s: &Server, n: usize) -> String {
    s.wait_for("a bounce in alice's mailbox", || {
        s.maildir("alice").len() >= n
    });
    fs::read_to_string(&s.maildir("alice")[n - 1]).unwrap()
}

/// Parses a bounce with Python's email package; prints the report's fields.
fn parse_bounce(path: &std::path::Path) -> String {
    // message/global-delivery-status (RFC 6533, when the report is not all
    // ASCII) is not parsed into blocks by Python's email package: its
    // fields are read from the text there.
    python(
        "import email,re,sys\nm=email.message_from_binary_file(open(sys.argv[1],'rb'))\n\
         print(m.get_content_type(), m.get_param('report-type'), m['Return-Path'])\n\
         for p in m.walk():\n    print(p.get_content_type())\n\
         st=[p for p in m.walk() if p.get_content_type() in ('message/delivery-status','message/global-delivery-status')][0]\n\
         if st.get_content_type()=='message/delivery-status':\n    blocks=[dict(b.items()) for b in st.get_payload()]\n\
         else:\n    raw=st.get_payload(decode=True) if not st.is_multipart() else b''.join(x.as_bytes() for x in st.get_payload())\n    \
         blocks=[dict(re.findall(r'^([A-Za-z-]+): (.*?)\\r?$', b, re.M)) for b in raw.decode('utf-8','replace').split('\\r\\n\\r\\n')]\n\
         for block in blocks:\n    for k in ('Final-Recipient','Action','Status'):\n        if block.get(k): print(k, block[k])",
        path,
    )
}

#[test]
fn a_null_mx_bounces_at_once_with_5_1_10() {
    let dns = TestDns::start();
    dns.mx("nullmx.test", 0, ".");
    let s = delivering(&format!("dns_servers = {}\n", dns.addr));
    send(&s, "alice@satchel.test", &["x@nullmx.test"], "nullmx");
    let b = bounce_for(&s, 1);
    assert!(b.starts_with("Return-Path: <>\n"), "a bounce comes from <>");
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("multipart/report delivery-status <>"),
        "{report}"
    );
    assert!(
        report.contains("Final-Recipient rfc822; x@nullmx.test\nAction failed\nStatus 5.1.10"),
        "{report}"
    );
}

#[test]
fn an_unknown_domain_bounces_with_5_1_2() {
    let dns = TestDns::start();
    let s = delivering(&format!("dns_servers = {}\n", dns.addr));
    send(&s, "alice@satchel.test", &["x@nowhere.test"], "nxdomain");
    bounce_for(&s, 1);
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(report.contains("Status 5.1.2"), "{report}");
}

#[test]
fn a_dns_time_out_defers_and_mail_goes_once_dns_answers() {
    let dns = TestDns::start();
    let port = free_port();
    let host = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 8], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    dns.mx("slow.test", 10, "mx.slow.test");
    dns.a("mx.slow.test", [127, 0, 0, 8].into());
    dns.silent("slow.test", true);
    let s = delivering(&format!(
        "dns_servers = {}\ndns_timeout = 200ms\nrelay_port = {port}\n",
        dns.addr
    ));
    let id = send(&s, "alice@satchel.test", &["x@slow.test"], "slowdns");
    s.wait_for("deferral", || {
        s.log()
            .contains(&format!("{id}: to=<x@slow.test>, relay=none, delay="))
            && s.queued() == vec![id.clone()]
    });
    assert!(
        s.log().contains("status=deferred (451 4.4.3"),
        "{}",
        s.log()
    );
    let list = String::from_utf8_lossy(&s.run(&["queue", "list"]).stdout).into_owned();
    assert!(
        list.contains("x@slow.test (deferred, next attempt ")
            && list.contains(", via MX of slow.test): 451 4.4.3"),
        "{list}"
    );
    assert!(host.received().is_empty());
    dns.silent("slow.test", false);
    let out = s.run(&["queue", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_for("delivery after the flush", || host.received().len() == 1);
    s.wait_for("removal", || s.queued().is_empty());
}

/// A remote that answers `reply` to recipients starting with `prefix`
/// and accepts all others.
fn refuses_prefix(port: u16, prefix: &'static str, reply: &'static str) -> FakeSmtp {
    FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(move |rcpt, _| {
            if rcpt.starts_with(prefix) {
                reply.into()
            } else {
                "250 ok".into()
            }
        }),
    )
}

/// A remote that defers every recipient on its first connection and
/// accepts them on any later one.
fn defers_first_connection(port: u16) -> FakeSmtp {
    FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, conn| {
            if conn == 0 {
                "451 4.3.0 try again later".into()
            } else {
                "250 ok".into()
            }
        }),
    )
}

#[test]
fn a_remote_4xx_defers_with_backoff_then_delivers() {
    let port = free_port();
    let host = defers_first_connection(port);
    let s = delivering(&format!(
        "relayhost = [127.0.0.1]:{port}\nmin_backoff = 10m\n"
    ));
    let id = send(&s, "alice@satchel.test", &["x@remote.test"], "retry");
    s.wait_for("deferral", || {
        s.queued() == vec![id.clone()]
            && s.log()
                .contains("status=deferred (451 4.3.0 try again later)")
    });
    let env = s.envelope(&id);
    assert!(env.contains("\nattempts 1\n"), "{env}");
    let next: u64 = env
        .lines()
        .find_map(|l| l.strip_prefix("next-attempt "))
        .unwrap()
        .parse()
        .unwrap();
    let created: u64 = env
        .lines()
        .find_map(|l| l.strip_prefix("created "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next >= created + 600,
        "backoff of min_backoff: {next} vs {created}"
    );
    assert!(
        env.contains("rcpt deferred <x@remote.test> 451 4.3.0 try again later"),
        "{env}"
    );
    // The deferral wrote the envelope alone; the content stayed in its file.
    assert!(env.ends_with("\ndata msg 2048\nend\n"), "{env}");
    let msg = s.spool().join("msg").join(&id);
    assert!(String::from_utf8_lossy(&fs::read(&msg).unwrap()).ends_with("Hello, retry.\r\n"));
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("delivery on retry", || {
        host.received().len() == 1 && s.queued().is_empty()
    });
    assert!(String::from_utf8_lossy(&host.received()[0].data).contains("Hello, retry."));
    s.wait_for("the content file removed", || !msg.exists());
}

#[test]
fn a_5xx_for_one_of_two_recipients_delivers_one_and_bounces_the_other() {
    let port = free_port();
    let host = refuses_prefix(port, "bad@", "550 5.1.1 no such user");
    let s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    send(
        &s,
        "alice@satchel.test",
        &["good@remote.test", "bad@remote.test"],
        "mixed",
    );
    s.wait_for("the good copy", || host.received().len() == 1);
    assert_eq!(host.received()[0].rcpts, vec!["good@remote.test"]);
    bounce_for(&s, 1);
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("multipart/report delivery-status <>"),
        "{report}"
    );
    // Python shows the delivery-status blocks as text/plain sub-parts.
    assert!(
        report.contains("multipart/report\ntext/plain\nmessage/delivery-status\n"),
        "{report}"
    );
    assert!(report.contains("\ntext/rfc822-headers\n"), "{report}");
    assert!(
        report.contains("Final-Recipient rfc822; bad@remote.test\nAction failed\nStatus 5.1.1"),
        "{report}"
    );
    assert!(!report.contains("good@remote.test"));
    let b = fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(
        b.contains("Subject: mixed"),
        "the original headers come back"
    );
    assert!(b.contains("Remote-MTA: dns; 127.0.0.1"));
    s.wait_for("queue empty", || s.queued().is_empty());
}

#[test]
fn mail_still_deferred_at_the_end_of_its_lifetime_bounces_with_4_4_7() {
    let port = free_port();
    let _host = refuses_prefix(port, "", "451 4.3.0 try again later");
    let s = delivering(&format!(
        "relayhost = [127.0.0.1]:{port}\nmax_queue_lifetime = 1s\nmin_backoff = 1s\n"
    ));
    send(&s, "alice@satchel.test", &["late@remote.test"], "too late");
    bounce_for(&s, 1);
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("Final-Recipient rfc822; late@remote.test\nAction failed\nStatus 4.4.7"),
        "{report}"
    );
    let b = fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(
        b.contains("Diagnostic-Code: x-satchel; 4.4.7 delivery time expired; last error: "),
        "{b}"
    );
    s.wait_for("queue empty", || s.queued().is_empty());
}

/// Sends a message with the SMTPUTF8 parameter and `subject`.
fn send_smtputf8(s: &Server, to: &str, subject: &str) {
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<alice@satchel.test> SMTPUTF8").0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(&body(subject));
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
    c.cmd("QUIT");
}

#[test]
fn smtputf8_mail_needs_the_extension_only_when_it_is_not_ascii() {
    let port = free_port();
    let host = refuses_prefix(port, "nobody-", "550 unused");
    let s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    // The fake server does not offer SMTPUTF8.
    send_smtputf8(&s, "x@remote.test", "plain ascii");
    s.wait_for("the ASCII message delivered", || host.received().len() == 1);
    send_smtputf8(&s, "y@remote.test", "gr\u{fc}\u{df}e");
    bounce_for(&s, 1);
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("Final-Recipient rfc822; y@remote.test\nAction failed\nStatus 5.6.7"),
        "{report}"
    );
    assert_eq!(host.received().len(), 1);
}

#[test]
fn mail_from_the_null_sender_is_never_bounced() {
    let port = free_port();
    let _host = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "550 5.1.1 no".into()),
    );
    let s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let id = send(&s, "", &["bad@remote.test"], "double");
    s.wait_for("the failure", || {
        s.log().contains(&format!("{id}: removed"))
    });
    assert!(s.log().contains("not returned; discarded"));
    assert!(s.queued().is_empty(), "no bounce was queued");
    assert!(!s.mail_dir().exists() || fs::read_dir(s.mail_dir()).unwrap().count() == 0);
}

#[test]
fn kill_9_during_delivery_loses_nothing() {
    let port = free_port();
    // The first connection stalls at RCPT long enough for the kill.
    let host = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, conn| {
            if conn == 0 {
                std::thread::sleep(Duration::from_secs(3));
            }
            "250 ok".into()
        }),
    );
    let mut s = delivering(&format!(
        "relayhost = [127.0.0.1]:{port}\ndelivery_threads = 1\n"
    ));
    let subjects: Vec<String> = (0..5).map(|i| format!("crash{i}")).collect();
    for sub in &subjects {
        send(&s, "alice@satchel.test", &["x@remote.test"], sub);
    }
    s.wait_for("the first connection", || {
        host.connections.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    s.kill9();
    s.spawn();
    s.wait_for("all five delivered", || {
        let got = host.received();
        subjects.iter().all(|sub| {
            got.iter()
                .any(|g| String::from_utf8_lossy(&g.data).contains(&format!("Subject: {sub}\r\n")))
        })
    });
    s.wait_for("queue empty", || s.queued().is_empty());
}

/// A remote that keeps its first connection waiting at RCPT for `secs`.
fn slow_first_connection(port: u16, secs: u64) -> FakeSmtp {
    FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(move |_, conn| {
            if conn == 0 {
                std::thread::sleep(Duration::from_secs(secs));
            }
            "250 ok".into()
        }),
    )
}

#[test]
fn local_deliveries_are_written_down_before_the_remote_ones_start() {
    let port = free_port();
    let host = slow_first_connection(port, 3);
    let mut s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let id = send(
        &s,
        "bob@satchel.test",
        &["alice@satchel.test", "x@remote.test"],
        "both",
    );
    let active = s.spool().join("active").join(&id);
    s.wait_for(
        "alice's delivery recorded while the remote one waits",
        || {
            fs::read_to_string(&active)
                .is_ok_and(|e| e.contains("\nrcpt sent <alice@satchel.test>"))
        },
    );
    assert!(host.received().is_empty());
    // A crash now: after the restart only the remote recipient is left.
    s.kill9();
    s.spawn();
    s.wait_for("the remote delivery", || host.received().len() == 1);
    s.wait_for("queue empty", || s.queued().is_empty());
    assert_eq!(s.maildir("alice").len(), 1, "alice got the message twice");
}

#[test]
fn a_stop_lets_the_delivery_under_way_finish_and_records_it() {
    let port = free_port();
    let host = slow_first_connection(port, 2);
    let mut s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let id = send(&s, "alice@satchel.test", &["x@remote.test"], "stop");
    s.wait_for("the delivery under way", || {
        host.connections.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(host.received().len(), 1);
    let left: Vec<_> = ["queue", "active"]
        .iter()
        .filter(|d| s.spool().join(d).join(&id).exists())
        .collect();
    assert!(left.is_empty(), "still in {left:?}: it would go again");
    assert!(!s.log().contains("under way"), "{}", s.log());
}

#[test]
fn a_delay_warning_is_sent_once_when_configured() {
    let port = free_port();
    let _host = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "451 4.3.0 later".into()),
    );
    let s = delivering(&format!("relayhost = [127.0.0.1]:{port}\nmin_backoff = 1s\nmax_backoff = 1s\ndelay_warning_time = 1s\n"));
    let id = send(&s, "alice@satchel.test", &["x@remote.test"], "slow");
    let b = bounce_for(&s, 1);
    assert!(
        b.contains("Subject: Delayed Mail (still being retried)"),
        "{b}"
    );
    let report = parse_bounce(&s.maildir("alice")[0]);
    assert!(
        report.contains("Final-Recipient rfc822; x@remote.test\nAction delayed\nStatus 4.3.0"),
        "{report}"
    );
    s.wait_for("the warned flag", || {
        s.envelope(&id).contains("\nwarned yes\n") || s.spool().join("active").join(&id).exists()
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.maildir("alice").len(), 1, "only one warning");
}

#[test]
fn a_queue_file_that_cannot_be_read_goes_back_to_the_queue_not_stuck_in_active() {
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "defer_delivery = no\n");
    // Opens but cannot be read (EISDIR): an I/O error, not damage.
    let id = "00000000000000C1";
    fs::create_dir_all(s.spool().join("queue").join(id)).unwrap();
    s.spawn();
    s.wait_for("the failed attempt", || {
        s.log().contains("tried again later")
    });
    s.wait_for("back in queue/", || {
        s.spool().join("queue").join(id).exists() && !s.spool().join("active").join(id).exists()
    });
}

#[test]
fn queue_delete_removes_a_waiting_message() {
    let s = Server::start("");
    let id = send(&s, "a@example.org", &["alice@satchel.test"], "unwanted");
    assert_eq!(s.queued(), vec![id.clone()]);
    let out = s.run(&["queue", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.queued().is_empty());
    assert_eq!(s.partial(), 0);
    let again = s.run(&["queue", "delete", &id]);
    assert!(!again.status.success());
    let bad = s.run(&["queue", "delete", "../../etc/passwd"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_busy_relayhost_gets_its_session_reused_and_a_refusing_one_a_new_session() {
    let port = free_port();
    // Every recipient is accepted except "later@...", which is deferred.
    let host = refuses_prefix(port, "later@", "451 4.3.0 not now");
    let s = delivering(&format!(
        "relayhost = [127.0.0.1]:{port}\ndelivery_threads = 1\n"
    ));
    for i in 0..5 {
        send(
            &s,
            "alice@satchel.test",
            &["x@remote.test"],
            &format!("reuse {i}"),
        );
        s.wait_for("delivery", || host.received().len() == i + 1);
    }
    let n = host.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n < 5, "5 messages in a row took {n} connections");
    // A session with a deferred recipient is not kept: the next message
    // gets a new connection.
    send(&s, "alice@satchel.test", &["later@remote.test"], "deferred");
    s.wait_for("deferral", || {
        s.log().contains("status=deferred (451 4.3.0 not now)")
    });
    let before = host.connections.load(std::sync::atomic::Ordering::SeqCst);
    send(&s, "alice@satchel.test", &["y@remote.test"], "after");
    s.wait_for("delivery after the deferral", || host.received().len() == 6);
    assert_eq!(
        host.connections.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "the session that deferred was closed, not reused"
    );
}

#[test]
fn a_deferred_message_keeps_its_next_attempt_across_a_restart() {
    use std::os::unix::fs::MetadataExt;
    let port = free_port();
    let host = defers_first_connection(port);
    let mut s = delivering(&format!(
        "relayhost = [127.0.0.1]:{port}\nmin_backoff = 10m\n"
    ));
    let id = send(&s, "alice@satchel.test", &["x@remote.test"], "restart");
    s.wait_for("deferral", || {
        s.queued() == vec![id.clone()] && s.log().contains("status=deferred")
    });
    // The envelope's mtime is its next attempt: what the start-up scan reads.
    let env = s.envelope(&id);
    let next: i64 = env
        .lines()
        .find_map(|l| l.strip_prefix("next-attempt "))
        .unwrap()
        .parse()
        .unwrap();
    let mtime = fs::metadata(s.spool().join("queue").join(&id))
        .unwrap()
        .mtime();
    assert_eq!(mtime, next, "{env}");

    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    let connections = host.connections.load(std::sync::atomic::Ordering::SeqCst);
    s.spawn();
    s.wait_for("the start-up scan", || {
        s.log().contains("queue scan: 1 message(s) waiting")
    });
    // Scheduled ten minutes ahead, not retried at once: the scheduler wakes
    // for due messages only, so a second is plenty to see a wrong retry.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        host.connections.load(std::sync::atomic::Ordering::SeqCst),
        connections,
        "retried at start-up although its next attempt is 10 minutes away"
    );
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("delivery after flush", || {
        host.received().len() == 1 && s.queued().is_empty()
    });
}
