//! Abuse, bad input and faults: slow and flooding clients, huge messages,
//! many connections, a full disk, broken remote servers, crashes.

mod common;

use common::fake::{FakeSmtp, Fault};
use common::{free_port, queue_id, Client, Server};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_dripping_one_byte_a_second_is_cut_off() {
    let s = Server::start("command_timeout = 2s\n");
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 64];
    let _ = c.read(&mut greeting).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    // Each byte arrives well within a per-read time-out; the line never ends.
    for b in b"NOOP and on and on and on".iter().cycle().take(20) {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut buf = [0u8; 256];
        c.set_nonblocking(true).unwrap();
        if let Ok(n) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        c.set_nonblocking(false).unwrap();
        if !got.is_empty() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("421 4.4.2"),
        "{text:?} after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_slow_client_in_data_is_cut_off_and_nothing_is_queued() {
    let s = Server::start("data_timeout = 2s\n");
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    for b in b"Subject: never ending".iter() {
        if c.w.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let rest = c.rest();
    assert!(rest.starts_with("421 4.4.2"), "{rest:?}");
    assert!(s.queued().is_empty());
    s.wait_for("the partial file removed", || s.partial() == 0);
}

#[test]
fn a_one_gib_data_stream_is_refused_at_the_size_limit_with_flat_memory() {
    let s = Server::start("message_size_limit = 1M\n");
    let pid = s.child.as_ref().unwrap().id();
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let before = rss_kb(pid);
    let mut line = vec![b'x'; 998];
    line.extend_from_slice(b"\r\n");
    let block: Vec<u8> = line.iter().copied().cycle().take(1000 * 1024).collect(); // 1000 lines
    let mut peak = before;
    let total: usize = 1 << 30;
    let mut sent = 0;
    while sent < total {
        c.w.write_all(&block).unwrap();
        sent += block.len();
        if sent % (64 << 20) < block.len() {
            peak = peak.max(rss_kb(pid));
        }
    }
    c.send(b".\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    println!("RSS before {before} kB, peak during 1 GiB of DATA {peak} kB");
    assert!(
        peak < before + 8 * 1024,
        "memory grew from {before} kB to {peak} kB"
    );
    assert_eq!(c.cmd("NOOP").0, 250);
    assert_eq!(s.partial(), 0);
}

#[test]
fn a_thousand_connections_get_421_beyond_the_limit_and_memory_stays_bounded() {
    let s = Server::start("max_connections = 100\n");
    let pid = s.child.as_ref().unwrap().id();
    let mut open = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for _ in 0..1000 {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 128];
        let n = c.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("220") {
            greeted += 1;
            open.push(c);
        } else {
            assert!(text.starts_with("421 4.3.2"), "{text}");
            refused += 1;
        }
    }
    let rss = rss_kb(pid);
    println!("1000 connections: {greeted} served, {refused} refused at once; server RSS {rss} kB");
    assert_eq!((greeted, refused), (100, 900));
    assert!(rss < 32 * 1024, "RSS {rss} kB");
    // Responsive: a served client still gets answers.
    open[0].write_all(b"NOOP\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = open[0].read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"250"));
    drop(open);
    s.wait_for("the pool to drain", || {
        let mut c = Client::connect(s.addr());
        c.reply().0 == 220
    });
}

#[test]
fn command_and_recipient_floods_are_bounded() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    // 5,000 pipelined NOOPs: answered in order; after 100 each one counts
    // as an error (Postfix's smtpd_junk_command_limit), so the 20th of
    // those ends the session.
    let flood: Vec<u8> = b"NOOP\r\n".iter().copied().cycle().take(6 * 5000).collect();
    c.send(&flood);
    for _ in 0..119 {
        assert_eq!(c.reply().0, 250);
    }
    assert_eq!(c.reply().0, 421);
    // RCPT flood: unknown users' 550s count as errors and end the session.
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    let mut codes = Vec::new();
    for i in 0..200 {
        c.line(&format!("RCPT TO:<u{i}@satchel.test>"));
        let (code, _) = c.reply();
        codes.push(code);
        if code == 421 {
            break;
        }
    }
    assert!(codes.iter().all(|&c| c == 550 || c == 452 || c == 421));
    assert_eq!(
        codes.last(),
        Some(&421),
        "the session ends after max_errors"
    );
    assert!(codes.len() <= 21);
}

#[test]
fn control_characters_never_reach_a_header_or_the_log() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    assert_eq!(c.reply().0, 220);
    c.send(b"HELO evil\x00name\r\n");
    assert_eq!(c.reply().0, 500);
    c.send(b"HELO evil\x1b[31mname\r\n");
    assert_eq!(c.reply().0, 500);
    c.send(b"HELO ok.test\r\n");
    assert_eq!(c.reply().0, 250);
    c.send(b"MAIL FROM:<a\x00b@example.org>\r\n");
    assert_eq!(c.reply().0, 500);
    let (code, text) = c.mail(
        "a@example.org",
        &["alice@satchel.test"],
        b"Subject: x\r\n\r\ny\r\n",
    );
    assert_eq!(code, 250);
    let msg = s.message(&queue_id(&text));
    assert!(!msg.iter().any(|&b| b == 0 || b == 0x1b));
    let log = s.log();
    assert!(!log.contains('\0') && !log.contains('\x1b'), "{log:?}");
}

fn delivering(extra: &str) -> Server {
    Server::start(&format!(
        "defer_delivery = no\nrelay_timeout = 2s\nconnect_timeout = 2s\n{extra}"
    ))
}

fn send(s: &Server, subject: &str) -> String {
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "alice@satchel.test",
        &["x@remote.test"],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    assert_eq!(code, 250);
    queue_id(&text)
}

/// A remote that misbehaves on its first connection, then behaves.
fn faulty_remote_defers_then_delivers(fault: Fault, why: &str) {
    let port = free_port();
    let remote = FakeSmtp::start_with(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
        Box::new(move |n| if n == 0 { fault } else { Fault::None }),
    );
    let s = delivering(&format!("relayhost = [127.0.0.1]:{port}\n"));
    let id = send(&s, why);
    // (A remote that hangs up after reading what was sent, the final dot
    // perhaps included, may have taken the message: that defers too, but
    // names the relay; see `relay::dialogue`.)
    s.wait_for("the deferral", || {
        s.log()
            .contains(&format!("{id}: to=<x@remote.test>, relay="))
            && s.queued() == vec![id.clone()]
    });
    assert!(s.log().contains("status=deferred"), "{}", s.log());
    assert!(remote.received().is_empty());
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("delivery on retry", || {
        remote.received().len() == 1 && s.queued().is_empty()
    });
}

#[test]
fn a_remote_that_drops_the_connection_mid_data_is_retried() {
    faulty_remote_defers_then_delivers(Fault::DropInData, "dropped");
}

#[test]
fn a_remote_that_never_greets_is_retried() {
    faulty_remote_defers_then_delivers(Fault::NoGreeting, "silent");
}

#[test]
fn a_remote_that_answers_garbage_is_retried() {
    faulty_remote_defers_then_delivers(Fault::Garbage, "garbage");
}

#[test]
fn a_full_spool_disk_gets_452_and_leaves_nothing_partial() {
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !is_root {
        println!("skipped: mounting a small tmpfs for the spool needs root");
        return;
    }
    // Without the free-space floor (queue_min_free), to reach the disk's end.
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        "message_size_limit = 8M\nqueue_min_free = 0\nqueue_min_free_percent = 0\n",
    );
    let spool = s.spool();
    fs::create_dir_all(&spool).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&spool)
        .status()
        .map(|st| st.success())
        .unwrap_or(false);
    if !mounted {
        println!("skipped: cannot mount a tmpfs here (no CAP_SYS_ADMIN in this sandbox?)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(spool.clone());
    s.spawn();
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let line = [b"y".repeat(998), b"\r\n".to_vec()].concat();
    for _ in 0..2048 {
        c.send(&line); // 2 MB into a 1 MB file system
    }
    c.send(b".\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("4.3.1"));
    assert!(s.queued().is_empty());
    assert_eq!(s.partial(), 0, "nothing partial remains");
    // A small message still fits afterwards.
    let (code, _) = c.mail(
        "a@example.org",
        &["alice@satchel.test"],
        b"Subject: small\r\n\r\nfits\r\n",
    );
    assert_eq!(code, 250);
    // With a floor above what the disk has, new mail is refused at MAIL
    // and the queued message stays.
    let text = fs::read_to_string(&s.conf).unwrap();
    fs::write(
        &s.conf,
        text.replace("queue_min_free = 0\n", "queue_min_free = 2M\n"),
    )
    .unwrap();
    s.signal("HUP");
    s.wait_for("the reload", || {
        s.log().contains("reloaded the configuration")
    });
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.cmd("MAIL FROM:<a@example.org>");
    assert_eq!(code, 452, "{text}");
    assert_eq!(s.queued().len(), 1);
    s.kill9();
}

/// The shortened crash soak (scripts/soak runs the long one): messages are
/// sent while satchel is killed with -9 and restarted; every message that
/// got a 250 must arrive at the remote at least once.
#[test]
fn crash_soak_loses_nothing_that_was_acknowledged() {
    let port = free_port();
    let remote = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    let mut s = delivering(&format!(
        "relayhost = [127.0.0.1]:{port}\nmin_backoff = 1s\nmax_backoff = 1s\n"
    ));
    let mut acknowledged = Vec::new();
    let mut sent = 0;
    for round in 0..3 {
        for i in 0..60 {
            sent += 1;
            let subject = format!("soak-{round}-{i}");
            let Ok(stream) = TcpStream::connect(s.addr()) else {
                continue;
            };
            let mut c = Client::from_stream(stream);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.hello();
                c.mail(
                    "alice@satchel.test",
                    &["x@remote.test"],
                    format!("Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\nx\r\n")
                        .as_bytes(),
                )
            }));
            if let Ok((250, _)) = ok {
                acknowledged.push(subject);
            }
            if i == 30 + round * 7 {
                s.kill9();
                s.spawn();
            }
        }
    }
    s.wait_for("every acknowledged message at the remote", || {
        let got = remote.received();
        acknowledged.iter().all(|sub| {
            got.iter()
                .any(|g| String::from_utf8_lossy(&g.data).contains(&format!("Subject: {sub}\r\n")))
        })
    });
    let got = remote.received();
    let dupes = got.len() - acknowledged.len().min(got.len());
    println!(
        "soak: sent {sent}, acknowledged {}, arrived {}, lost 0, duplicates {dupes}",
        acknowledged.len(),
        got.len()
    );
}

/// The client side of smuggling: even a queued message with bare LF and CR
/// (written by some other program into the spool) leaves satchel with CRLF
/// line ends only and its lone dots stuffed; the fake remote asserts it.
#[test]
fn the_client_never_sends_a_bare_cr_or_lf() {
    use satchel::address::{ForwardPath, ReversePath};
    use satchel::envelope::{Envelope, RcptState, Recipient};
    let port = free_port();
    let remote = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!("defer_delivery = no\nrelayhost = [127.0.0.1]:{port}\n"),
    );
    let spool = satchel::spool::Spool::open(&s.spool()).unwrap();
    let mut env = Envelope {
        id: String::new(),
        created: 1,
        client: "localhost".into(),
        helo: "t".into(),
        protocol: "local".into(),
        body: "7BIT".into(),
        smtputf8: false,
        size: 0,
        from: ReversePath::parse("<a@satchel.test>").unwrap(),
        attempts: 0,
        next_attempt: 0,
        warned: false,
        dkim: String::new(),
        ret: None,
        envid: None,
        requiretls: false,
        rcpts: vec![Recipient {
            addr: ForwardPath::parse("<x@remote.test>").unwrap(),
            state: RcptState::Pending,
            expanded: false,
            via: None,
            dsn: Default::default(),
        }],
    };
    spool
        .queue_bytes(
            b"Subject: smuggle\n\nbody\n.\nMAIL FROM:<evil@x>\r.\rend",
            &mut env,
        )
        .unwrap();
    s.spawn();
    s.wait_for("delivery", || remote.received().len() == 1);
    let data = remote.received()[0].data.clone();
    assert_eq!(
        data,
        b"Subject: smuggle\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@x>\r\n.\r\nend\r\n"
    );
}

#[test]
fn a_full_mailbox_file_system_defers_and_loses_nothing() {
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !is_root {
        println!("skipped: mounting a small tmpfs for the mailboxes needs root");
        return;
    }
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        "defer_delivery = no\nmessage_size_limit = 8M\nmin_backoff = 1s\nmax_backoff = 1s\n",
    );
    let mail = s.mail_dir();
    fs::create_dir_all(&mail).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mail)
        .status()
        .map(|st| st.success())
        .unwrap_or(false);
    if !mounted {
        println!("skipped: cannot mount a tmpfs here");
        return;
    }
    let mounted_at = mail.clone();
    let unmount = move || {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mounted_at)
            .status();
    };
    s.spawn();
    let mut c = Client::connect(s.addr());
    c.hello();
    let line = [b"z".repeat(998), b"\r\n".to_vec()].concat();
    let big: Vec<u8> = [b"Subject: big\r\n\r\n".to_vec(), line.repeat(2048)].concat(); // 2 MB
    let (code, text) = c.mail("a@example.org", &["alice@satchel.test"], &big);
    assert_eq!(code, 250, "{text}");
    let id = queue_id(&text);
    s.wait_for("the deferral", || {
        s.log()
            .contains("status=deferred (451 4.3.0 cannot deliver to mailbox")
    });
    assert!(!s.message(&id).is_empty(), "the message is kept");
    // A retry (every second here) may be writing its tmp file at any
    // moment; between attempts, nothing partial is left behind.
    let tmp_left = || {
        fs::read_dir(mail.join("alice").join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    s.wait_for("no partial file left in the Maildir", || tmp_left() == 0);
    // Room again: the next attempt delivers it.
    unmount();
    s.wait_for("delivery once there is room", || {
        s.maildir("alice").len() == 1 && s.queued().is_empty()
    });
    s.kill9();
}
