//! The milter client against a small filter of the tests' own, written
//! from the protocol (not satchel's code): it negotiates, answers every
//! stage, and at the end of the message adds a header field, refuses a
//! message whose body has a marker, or hangs up in the middle, as told.
//! OpenDKIM is the real filter in `scripts/interop`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{Client, Server};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Continue everywhere; at the end add a header field, refuse bodies
    /// with XJS*C4JDBQADN1 (a GTUBE-like marker), quarantine "quarantine".
    Normal,
    /// Close the connection after the first body chunk.
    HangUp,
    /// At the end: tag the subject, delete X-Folded, insert a field at the
    /// top, replace the body (in two chunks).
    Rewrite,
    /// At the end: body replacement chunks without end (bounded here at
    /// 40 MiB, over satchel's limit).
    Flood,
    /// At the end: a packet that claims 2 GiB.
    Huge,
}

fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut data).ok()?;
    let cmd = data.remove(0);
    Some((cmd, data))
}

fn send(s: &mut TcpStream, cmd: u8, data: &[u8]) {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    let _ = s.write_all(&p);
}

/// Serves milter connections on a loopback port; records what it saw.
fn fake_milter(mode: Mode) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let log = log.clone();
            thread::spawn(move || serve(&mut s, mode, &log));
        }
    });
    (addr, seen)
}

fn serve(s: &mut TcpStream, mode: Mode, log: &Mutex<Vec<String>>) {
    let mut body = Vec::new();
    while let Some((cmd, data)) = read_packet(s) {
        let text = String::from_utf8_lossy(&data).replace('\0', "|");
        log.lock().unwrap().push(format!("{}:{text}", cmd as char));
        match cmd {
            // Version 6, add headers and quarantine, every step with replies.
            b'O' => send(s, b'O', &[0, 0, 0, 6, 0, 0, 0, 0x21, 0, 0, 0, 0]),
            b'D' => {}
            b'B' => {
                if mode == Mode::HangUp {
                    return;
                }
                body.extend_from_slice(&data);
                send(s, b'c', &[]);
            }
            b'E' if mode == Mode::Flood => {
                let chunk = vec![b'x'; 65535];
                for _ in 0..640 {
                    send(s, b'b', &chunk);
                }
                send(s, b'c', &[]);
            }
            b'E' if mode == Mode::Huge => {
                let _ = s.write_all(&[0x80, 0, 0, 0, b'b', 1, 2, 3]);
            }
            b'E' if mode == Mode::Rewrite => {
                send(s, b'm', b"\0\0\0\x01Subject\0[SPAM] filtered\0");
                send(s, b'm', b"\0\0\0\x01X-Folded\0\0");
                send(s, b'i', b"\0\0\0\0X-First\0inserted\0");
                send(s, b'b', b"replaced ");
                send(s, b'b', b"body\r\n");
                send(s, b'c', &[]);
            }
            b'E' => {
                let body = String::from_utf8_lossy(&body).to_string();
                if body.contains("XJS*C4JDBQADN1") {
                    send(s, b'y', b"554 5.7.1 Gtube pattern; see the test\0");
                    continue;
                }
                if body.contains("quarantine") {
                    send(s, b'q', b"held by the test\0");
                }
                send(s, b'h', b"X-Fake-Milter\0seen by the test filter\0");
                send(s, b'a', &[]);
            }
            b'M' if text.contains("<spammer@") => send(s, b'y', b"550 5.7.1 not you\0"),
            b'R' if text.contains("<bob@") => send(s, b'y', b"550 5.1.1 bob is away\0"),
            b'Q' => return,
            b'A' => body.clear(),
            _ => send(s, b'c', &[]),
        }
    }
}

/// One message to alice through a new session: the final reply.
fn mail_alice(s: &Server, body: &[u8]) -> (u16, String) {
    let mut c = Client::connect(s.addr());
    c.hello();
    c.mail("a@far.test", &["alice@satchel.test"], body)
}

/// A message meets the default action `tempfail`: 451, nothing queued.
fn tempfailed(s: &Server) {
    let (code, text) = mail_alice(s, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(
        (code, text.as_str()),
        (451, "4.7.1 Service unavailable - try again later")
    );
    assert!(s.queued().is_empty());
}

fn server(milter: SocketAddr, extra: &str) -> Server {
    Server::start(&format!("milters = inet:{milter}\n{extra}"))
}

#[test]
fn a_milter_sees_each_stage_and_adds_a_header_field() {
    let (addr, seen) = fake_milter(Mode::Normal);
    let s = server(addr, "");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "a@far.test",
        &["alice@satchel.test", "postmaster@satchel.test"],
        b"Subject: filtered\r\nX-Folded: one\r\n two\r\n\r\nhello\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let copy = String::from_utf8_lossy(&s.message(&common::queue_id(&text))).into_owned();
    assert!(
        copy.starts_with("X-Fake-Milter: seen by the test filter\r\nReceived: "),
        "{copy}"
    );
    let seen = seen.lock().unwrap().join("\n");
    for stage in [
        "C:[127.0.0.1]|4",
        "H:client.test|",
        "M:<a@far.test>|",
        "R:<alice@satchel.test>|",
        "R:<postmaster@satchel.test>|",
        "T:",
        "L:Subject|filtered|",
        "L:X-Folded|one\n two|",
        "N:",
        "B:hello\r\n",
        "E:",
    ] {
        assert!(seen.contains(stage), "no {stage:?} in\n{seen}");
    }
    assert!(seen.contains("{client_addr}|127.0.0.1|"), "{seen}");
}

#[test]
fn a_milter_changes_and_deletes_fields_and_replaces_the_body() {
    let (addr, _) = fake_milter(Mode::Rewrite);
    let s = server(addr, "");
    let (code, text) = mail_alice(
        &s,
        b"Subject: filtered\r\nX-Folded: one\r\n two\r\nX-Kept: yes\r\n\r\nold body\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let copy = String::from_utf8_lossy(&s.message(&common::queue_id(&text))).into_owned();
    let (trace, rest) = copy.split_once("\r\n\tfor <alice@satchel.test>; ").unwrap();
    assert!(trace.starts_with("Received: "), "{copy}");
    let rest = rest.split_once("\r\n").unwrap().1;
    assert_eq!(
        rest,
        "X-First: inserted\r\nSubject: [SPAM] filtered\r\nX-Kept: yes\r\n\r\nreplaced body\r\n"
    );
}

#[test]
fn a_milter_that_floods_or_sends_a_huge_packet_gets_the_default_action() {
    for mode in [Mode::Flood, Mode::Huge] {
        let (addr, _) = fake_milter(mode);
        let s = server(addr, "");
        tempfailed(&s);
        let log = s.log();
        assert!(
            log.contains("an endless new body") || log.contains("a packet of 2147483648 octets"),
            "{log}"
        );
    }
}

#[test]
fn a_milter_refuses_a_sender_or_one_recipient_at_its_command() {
    let (addr, seen) = fake_milter(Mode::Normal);
    let s = server(addr, "");
    let mut c = Client::connect(s.addr());
    c.hello();
    let r = c.cmd("MAIL FROM:<spammer@far.test>");
    assert_eq!((r.0, r.1.as_str()), (550, "5.7.1 not you"));
    assert_eq!(c.cmd("MAIL FROM:<a@far.test>").0, 250, "a new transaction");
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    let r = c.cmd("RCPT TO:<bob@satchel.test>");
    assert_eq!((r.0, r.1.as_str()), (550, "5.1.1 bob is away"));
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let env = s.envelope(&common::queue_id(&text));
    assert!(
        env.contains("<alice@satchel.test>") && !env.contains("<bob@satchel.test>"),
        "{env}"
    );
    // The refused transaction was aborted before the next one began.
    let seen = seen.lock().unwrap().join("\n");
    assert!(seen.contains("M:<spammer@far.test>|\nA:\nD:"), "{seen}");
}

#[test]
fn a_milter_refusal_reaches_the_client_and_nothing_is_queued() {
    let (addr, _) = fake_milter(Mode::Normal);
    let s = server(addr, "");
    let mut c = Client::connect(s.addr());
    c.hello();
    let body = b"Subject: spam\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let (code, text) = c.mail("a@far.test", &["alice@satchel.test"], body);
    assert_eq!(
        (code, text.as_str()),
        (554, "5.7.1 Gtube pattern; see the test")
    );
    assert!(s.queued().is_empty());
    // The session goes on: the next message is taken.
    let (code, _) = c.mail(
        "a@far.test",
        &["alice@satchel.test"],
        b"Subject: ok\r\n\r\nfine\r\n",
    );
    assert_eq!(code, 250);
    assert_eq!(s.queued().len(), 1);
}

#[test]
fn a_quarantined_message_is_held() {
    let (addr, _) = fake_milter(Mode::Normal);
    let s = server(addr, "");
    let (code, text) = mail_alice(&s, b"Subject: q\r\n\r\nquarantine me\r\n");
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    s.wait_for("the hold", || s.spool().join("hold").join(&id).exists());
}

#[test]
fn a_milter_that_hangs_up_gets_the_default_action() {
    let (addr, _) = fake_milter(Mode::HangUp);
    let s = server(addr, "");
    tempfailed(&s);
    let s = server(addr, "milter_default_action = accept\n");
    let (code, text) = mail_alice(&s, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(code, 250, "{text}");
    // Nobody listening at all: the same default.
    let dead = common::free_port();
    let s = Server::start(&format!(
        "milters = inet:127.0.0.1:{dead}\nmilter_default_action = reject\n"
    ));
    let mut c = Client::connect(s.addr());
    c.hello();
    // The filters are opened at the session's first MAIL.
    let (code, text) = c.cmd("MAIL FROM:<a@far.test>");
    assert_eq!(
        (code, text.as_str()),
        (550, "5.7.1 Service unavailable - rejected by policy")
    );
    assert!(s.log().contains("milter inet:127.0.0.1:"), "{}", s.log());
}
