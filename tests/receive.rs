//! The receiving half, as a client meets it: the real binary on an
//! ephemeral loopback port, real sockets, a real spool on disk.

mod common;

use common::{queue_id, Client, Server};
use std::fs;
use std::io::{Read, Write};
use std::time::Duration;

const BODY: &[u8] = b"From: a@example.org\r\nTo: alice@satchel.test\r\nSubject: test\r\n\r\nHello.\r\n..leading dot\r\n";

#[test]
fn a_full_transaction_lands_in_the_spool_with_a_received_header() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail("a@example.org", &["alice@satchel.test"], BODY);
    assert_eq!(code, 250, "{text}");
    assert!(text.starts_with("2.0.0 Ok: queued as "), "{text}");
    let id = queue_id(&text);
    assert_eq!(c.cmd("QUIT").0, 221);

    let msg = String::from_utf8(s.message(&id)).unwrap();
    let (received, rest) = msg
        .split_once("\r\nFrom: ")
        .expect("Received header then the message");
    assert!(received.starts_with(
        "Received: from client.test ([127.0.0.1])\r\n\tby mx.satchel.test (satchel) with ESMTP id "
    ));
    assert!(received.contains(&format!("id {id}\r\n\tfor <alice@satchel.test>; ")));
    // RFC 5322 date at the end, e.g. "Sun, 29 Nov 2026 01:54:17 +0000".
    assert!(received.ends_with("+0000"), "{received}");
    assert_eq!(format!("From: {rest}").as_bytes(), b"From: a@example.org\r\nTo: alice@satchel.test\r\nSubject: test\r\n\r\nHello.\r\n.leading dot\r\n");

    let env = s.envelope(&id);
    assert!(env.starts_with("version 2\n"));
    assert!(env.contains("from <a@example.org>\n"));
    assert!(env.contains("rcpt pending <alice@satchel.test>\n"));
    assert!(env.contains("client 127.0.0.1\nhelo client.test\n"));
    assert!(env.ends_with("\ndata 2048\nend\n"), "{env}");
    assert!(s
        .log()
        .contains(&format!("{id}: from=<a@example.org>, size=")));

    let list = s.run(&["queue", "list"]);
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        out.contains(&id) && out.contains("alice@satchel.test (pending, via local)"),
        "{out}"
    );
}

#[test]
fn one_hundred_recipients_are_accepted_and_the_next_gets_452() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@satchel.test>").0, 250);
    for i in 0..100 {
        assert_eq!(c.cmd(&format!("RCPT TO:<user{i}@remote.test>")).0, 250);
    }
    let (code, text) = c.cmd("RCPT TO:<one-too-many@remote.test>");
    assert_eq!(
        (code, text.as_str()),
        (452, "4.5.3 Error: too many recipients")
    );
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250);
    let env = s.envelope(&queue_id(&text));
    assert_eq!(env.matches("\nrcpt pending ").count(), 100);
}

#[test]
fn a_pipelined_transaction_gets_its_replies_in_order() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    c.send(
        b"MAIL FROM:<a@satchel.test>\r\nRCPT TO:<alice@satchel.test>\r\nRCPT TO:<nobody@satchel.test>\r\n\
          RCPT TO:<bob@satchel.test>\r\nDATA\r\n",
    );
    let codes: Vec<u16> = (0..5).map(|_| c.reply().0).collect();
    assert_eq!(codes, vec![250, 250, 550, 250, 354]);
    // End of data, a new transaction and QUIT in one write.
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    let codes: Vec<u16> = (0..4).map(|_| c.reply().0).collect();
    assert_eq!(codes, vec![250, 250, 250, 221]);
}

#[test]
fn declared_and_actual_oversize_messages_get_552() {
    let s = Server::start("message_size_limit = 2048\n");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.cmd("MAIL FROM:<a@satchel.test> SIZE=4096");
    assert_eq!(code, 552, "{text}");
    assert!(text.starts_with("5.3.4"));
    // Undeclared, and too big: read to the end, then refused.
    assert_eq!(c.cmd("MAIL FROM:<a@satchel.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    for _ in 0..100 {
        c.send(&[b'x'; 78]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    assert!(text.starts_with("5.3.4"));
    assert_eq!(c.cmd("NOOP").0, 250, "the session goes on");
    assert!(s.queued().is_empty());
    assert_eq!(s.partial(), 0, "nothing partial remains");
}

#[test]
fn an_early_talker_gets_554_and_is_closed() {
    let s = Server::start("greet_pause = 1s\n");
    let mut c = Client::connect(s.addr());
    c.send(b"EHLO impatient.test\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 554, "{text}");
    assert_eq!(c.rest(), "", "closed after the 554");
    // A patient client is served.
    let mut c = Client::connect(s.addr());
    c.hello();
}

#[test]
fn a_full_pool_answers_421() {
    let s = Server::start("max_connections = 2\n");
    let mut a = Client::connect(s.addr());
    assert_eq!(a.reply().0, 220);
    let mut b = Client::connect(s.addr());
    assert_eq!(b.reply().0, 220);
    let mut c = Client::connect(s.addr());
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("4.3.2"), "{text}");
    assert_eq!(c.rest(), "");
    // When one leaves, a new client gets in.
    assert_eq!(a.cmd("QUIT").0, 221);
    drop(a);
    let mut got = 0;
    for _ in 0..100 {
        let mut d = Client::connect(s.addr());
        got = d.reply().0;
        if got == 220 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got, 220);
    assert_eq!(b.cmd("NOOP").0, 250);
}

#[test]
fn relaying_from_outside_relay_networks_is_denied_with_554_5_7_1() {
    let s = Server::start("relay_networks = 127.0.0.1/32\n");
    let mut c = Client::connect_from(s.addr(), [127, 0, 0, 9]);
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<spammer@outside.test>").0, 250);
    let (code, text) = c.cmd("RCPT TO:<victim@elsewhere.test>");
    assert_eq!(code, 554);
    assert_eq!(text, "5.7.1 <victim@elsewhere.test>: Relay access denied");
    for trick in [
        "<@satchel.test:victim@elsewhere.test>",
        "<victim@[192.0.2.1]>",
    ] {
        assert_eq!(c.cmd(&format!("RCPT TO:{trick}")).0, 554, "{trick}");
    }
    for trick in [
        "<victim%elsewhere.test@satchel.test>",
        "<\"victim@elsewhere.test\"@satchel.test>",
    ] {
        assert_eq!(c.cmd(&format!("RCPT TO:{trick}")).0, 550, "{trick}");
    }
    // Local mail is accepted from anyone.
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    // The same relay from inside relay_networks is accepted.
    let mut inside = Client::connect(s.addr());
    inside.hello();
    assert_eq!(inside.cmd("MAIL FROM:<a@satchel.test>").0, 250);
    assert_eq!(inside.cmd("RCPT TO:<friend@elsewhere.test>").0, 250);
}

#[test]
fn more_connections_from_one_outside_address_than_allowed_get_421() {
    let s = Server::start("max_connections_per_ip = 2\n");
    let mut a = Client::connect_from(s.addr(), [127, 0, 0, 9]);
    assert_eq!(a.reply().0, 220);
    let mut b = Client::connect_from(s.addr(), [127, 0, 0, 9]);
    assert_eq!(b.reply().0, 220);
    let mut c = Client::connect_from(s.addr(), [127, 0, 0, 9]);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("4.7.0"));
    // Another address is not affected.
    let mut d = Client::connect_from(s.addr(), [127, 0, 0, 10]);
    assert_eq!(d.reply().0, 220);
}

#[test]
fn kill_9_right_after_250_keeps_the_message_intact() {
    let mut s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "a@example.org",
        &["alice@satchel.test", "bob@satchel.test"],
        BODY,
    );
    assert_eq!(code, 250);
    let id = queue_id(&text);
    let before = s.message(&id);
    s.kill9();
    s.spawn();
    assert_eq!(s.queued(), vec![id.clone()]);
    assert_eq!(s.message(&id), before);
    assert!(before.ends_with(b"Hello.\r\n.leading dot\r\n"));
    let list = s.run(&["queue", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));
}

#[test]
fn kill_9_in_the_middle_of_data_queues_nothing() {
    let mut s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: half\r\n\r\nthe first half");
    // Wait until the message file exists, so the kill lands mid-DATA.
    for _ in 0..200 {
        if s.partial() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.partial(), 1);
    s.kill9();
    s.spawn();
    assert!(s.queued().is_empty());
    assert_eq!(s.partial(), 0, "the leftover is removed at start");
    assert!(s.log().contains("1 temporary and"), "{}", s.log());
    let list = s.run(&["queue", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("Mail queue is empty"));
}

#[test]
fn an_unwritable_spool_gets_452_and_the_server_keeps_serving() {
    let s = Server::start("");
    let msg = s.spool().join("tmp");
    // Root ignores permissions, so make tmp/ unusable another way.
    fs::rename(&msg, s.spool().join("tmp.away")).unwrap();
    fs::write(&msg, b"not a directory").unwrap();
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    let (code, text) = c.cmd("DATA");
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("4.3.1"));
    fs::remove_file(&msg).unwrap();
    fs::rename(s.spool().join("tmp.away"), &msg).unwrap();
    let (code, _) = c.mail("a@example.org", &["alice@satchel.test"], BODY);
    assert_eq!(code, 250, "served again once the spool is writable");
    assert!(s.log().contains("cannot create message file"));
}

#[test]
fn smuggled_transactions_get_exactly_one_reply() {
    let s = Server::start("");
    for fake in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\n",
    ] {
        let mut c = Client::connect(s.addr());
        c.hello();
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(b"Subject: legit\r\n\r\nhello");
        c.send(fake);
        c.send(b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@satchel.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n");
        let (code, text) = c.reply();
        assert_eq!(code, 550, "{fake:?}: {text}");
        // The next reply is to our NOOP: nothing else was answered.
        assert_eq!(c.cmd("NOOP"), (250, "2.0.0 Ok".to_string()), "{fake:?}");
    }
    assert!(s.queued().is_empty());
}

#[test]
fn bare_lf_in_a_command_gets_521_and_close() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    c.send(b"NOOP\n");
    let (code, _) = c.reply();
    assert_eq!(code, 521);
    assert_eq!(c.rest(), "");
}

#[test]
fn an_overlong_command_line_gets_500() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    c.hello();
    let long = format!("NOOP {}", "x".repeat(600));
    let (code, text) = c.cmd(&long);
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("too long"));
    assert_eq!(c.cmd("NOOP").0, 250);
}

#[test]
fn an_idle_client_gets_421_4_4_2() {
    let s = Server::start("command_timeout = 1s\n");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.reply(); // sent by the server after the time-out
    assert_eq!(code, 421);
    assert!(text.starts_with("4.4.2"), "{text}");
    assert_eq!(c.rest(), "");
}

#[test]
fn sigterm_lets_a_transaction_in_data_finish_then_exits_0() {
    let mut s = Server::start("");
    let mut idle = Client::connect(s.addr());
    idle.hello();
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: during shutdown\r\n\r\n");
    s.signal("TERM");
    // The idle session is told and closed.
    let (code, text) = idle.reply();
    assert_eq!(code, 421, "{text}");
    c.send(b"finished after SIGTERM\r\n.\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let id = queue_id(&text);
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(String::from_utf8_lossy(&s.message(&id)).ends_with("finished after SIGTERM\r\n"));
}

#[test]
fn a_bad_setting_stops_satchel_with_status_2_and_file_line() {
    let dir = common::TempDir::new("badconf");
    let conf = dir.0.join("bad.conf");
    fs::write(&conf, "# ok\nhostname = mx.test\nmax_connections = lots\n").unwrap();
    for sub in [&["check-config"][..], &["serve"], &["queue", "list"]] {
        let out = std::process::Command::new(common::BIN)
            .args(sub)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:3: bad value for max_connections",
                conf.display()
            )),
            "{err}"
        );
    }
    fs::write(&conf, "colour = blue\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1: unknown setting 'colour'"));
}

#[test]
fn check_config_prints_the_effective_settings() {
    let s = Server::start("");
    let out = s.run(&["check-config"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hostname = mx.satchel.test\n"));
    assert!(text.contains("max_recipients = 100\n"));
    assert!(text.contains("message_size_limit = 10485760\n"));
}

#[test]
fn config_is_found_through_satchel_config_env() {
    let s = Server::start("");
    let out = std::process::Command::new(common::BIN)
        .arg("check-config")
        .env("SATCHEL_CONFIG", &s.conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hostname = mx.satchel.test"));
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let s = Server::start("");
    let mut slow = std::net::TcpStream::connect(s.addr()).unwrap();
    let mut greeting = [0u8; 3];
    slow.read_exact(&mut greeting).unwrap();
    slow.write_all(b"MAIL FROM:<half").unwrap(); // and never finishes the line
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(
        c.mail("a@example.org", &["alice@satchel.test"], BODY).0,
        250
    );
}

#[test]
fn the_reference_configuration_lists_every_setting_and_is_valid() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/satchel.conf");
    let text = fs::read_to_string(conf).unwrap();
    let mut documented: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_once(" ="))
        .map(|(k, _)| k.to_string())
        .filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    documented.sort();
    documented.dedup();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "-c", conf])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut effective: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .collect();
    effective.sort();
    assert_eq!(
        documented, effective,
        "etc/satchel.conf must document every setting"
    );
}
