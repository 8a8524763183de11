//! BDAT (RFC 3030) on the server, as a client meets it: chunks counted in
//! octets, pipelined or one by one, with DATA's limits and CR LF rules on
//! the content, refused BDATs whose chunks are read and dropped, and
//! sizes that cannot be read ending the session.

mod common;

use common::{queue_id, Client, Server};

const BODY: &[u8] =
    b"From: a@example.org\r\nSubject: chunked\r\n\r\nHello.\r\n..two dots stay two\r\n.\r\n";

/// Greeting, EHLO (which must offer CHUNKING), MAIL and one RCPT.
fn ready(s: &Server) -> Client {
    let mut c = Client::connect(s.addr());
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(ehlo.lines().any(|l| l == "CHUNKING"), "{ehlo}");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    c
}

/// `BDAT n [LAST]` and its chunk, in one write.
fn chunk(c: &mut Client, data: &[u8], last: bool) {
    let verb = format!("BDAT {}{}\r\n", data.len(), if last { " LAST" } else { "" });
    let mut bytes = verb.into_bytes();
    bytes.extend_from_slice(data);
    c.send(&bytes);
}

/// The content of queued message `id` after our Received: line.
fn content(s: &Server, id: &str) -> Vec<u8> {
    let m = s.message(id);
    let at = m
        .windows(7)
        .position(|w| w == b"\r\nFrom:")
        .expect("From: after Received:");
    m[at + 2..].to_vec()
}

#[test]
fn a_message_in_chunks_is_queued_as_sent_dots_and_all() {
    let s = Server::start("");
    let mut c = ready(&s);
    // Split inside a line and between CR and LF.
    chunk(&mut c, &BODY[..30], false);
    assert_eq!(c.reply(), (250, "2.0.0 Ok: 30 octets".into()));
    chunk(&mut c, &BODY[30..44], false);
    assert_eq!(c.reply().0, 250);
    chunk(&mut c, &BODY[44..], true);
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(content(&s, &queue_id(&text)), BODY);
    // The session goes on: a second message, all chunks pipelined with
    // the envelope, and a last chunk of 0 octets.
    let mut pipelined = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@satchel.test>\r\n".to_vec();
    pipelined.extend_from_slice(format!("BDAT {}\r\n", BODY.len()).as_bytes());
    pipelined.extend_from_slice(BODY);
    pipelined.extend_from_slice(b"BDAT 0 LAST\r\n");
    c.send(&pipelined);
    for want in [250, 250, 250] {
        assert_eq!(c.reply().0, want);
    }
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(content(&s, &queue_id(&text)), BODY);
    assert_eq!(c.cmd("QUIT").0, 221);
}

#[test]
fn a_last_line_without_crlf_gets_one_and_bare_line_ends_are_refused() {
    let s = Server::start("");
    let mut c = ready(&s);
    chunk(
        &mut c,
        b"From: a@example.org\r\n\r\nno newline at the end",
        true,
    );
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert!(content(&s, &queue_id(&text)).ends_with(b"no newline at the end\r\n"));
    // Bare LF, bare CR: refused whole after the last chunk, as with DATA.
    for bad in [
        &b"From: a@example.org\n\nbody\r\n"[..],
        b"From: a\r\n\r\nx\ry\r\n",
    ] {
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
        chunk(&mut c, bad, false);
        assert_eq!(c.reply().0, 250, "a chunk is taken before the end");
        chunk(&mut c, b"", true);
        let (code, text) = c.reply();
        assert_eq!((code, &text[..5]), (550, "5.6.0"), "{text}");
    }
    assert_eq!(s.queued().len(), 1);
}

#[test]
fn bdat_out_of_place_is_refused_and_its_chunk_skipped() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    // Before MAIL: 503, and the chunk ("NOOP\r\n" lookalike) is not a command.
    chunk(&mut c, b"QUIT\r\n", false);
    assert_eq!(c.reply().0, 503);
    assert_eq!(c.cmd("NOOP").0, 250, "the session is in step");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    chunk(&mut c, b"RSET\r\n", true);
    assert_eq!(c.reply().0, 503, "BDAT before RCPT");
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    // DATA between chunks: 503, the transaction goes on.
    chunk(&mut c, &BODY[..20], false);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.cmd("DATA").0, 503);
    assert_eq!(c.cmd("NOOP").0, 250);
    chunk(&mut c, &BODY[20..], true);
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(content(&s, &queue_id(&text)), BODY);
}

#[test]
fn rset_between_chunks_queues_nothing_and_the_session_goes_on() {
    let s = Server::start("");
    let mut c = ready(&s);
    chunk(&mut c, &BODY[..20], false);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.cmd("RSET").0, 250);
    assert!(s.queued().is_empty());
    assert_eq!(
        c.cmd("RCPT TO:<alice@satchel.test>").0,
        503,
        "the transaction is gone"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    chunk(&mut c, BODY, true);
    assert_eq!(c.reply().0, 250);
    assert_eq!(s.queued().len(), 1);
    // QUIT between chunks ends the session; nothing more is queued.
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test>").0, 250);
    chunk(&mut c, &BODY[..20], false);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert_eq!(s.queued().len(), 1);
}

#[test]
fn sizes_that_cannot_be_read_or_are_too_big_end_the_session() {
    let s = Server::start("message_size_limit = 2000\n");
    for (line, want) in [
        ("BDAT 99999999999999999999999", 501),
        ("BDAT -1", 501),
        ("BDAT 10 NOW", 501),
        ("BDAT", 501),
        ("BDAT 18446744073709551615 LAST", 552),
        ("BDAT 2001", 552),
    ] {
        let mut c = ready(&s);
        let (code, _) = c.cmd(line);
        assert_eq!(code, want, "{line}");
        assert!(c.rest().is_empty(), "{line}: the session goes on");
    }
    // Chunks that each fit but add up to more than the limit: 552 at the end.
    let mut c = ready(&s);
    chunk(&mut c, &[b'x'; 1500], false);
    assert_eq!(c.reply().0, 250);
    chunk(&mut c, &[b'y'; 1500], true);
    assert_eq!(c.reply().0, 552);
    assert_eq!(c.cmd("NOOP").0, 250);
    assert!(s.queued().is_empty());
}

/// The client side: to a next hop that offers CHUNKING the content goes
/// in BDAT chunks, dots not doubled, a big message in several chunks, and
/// arrives byte for byte.
#[test]
fn mail_to_a_hop_that_offers_chunking_goes_in_bdat_chunks() {
    use common::fake::{FakeSmtp, Fault};
    let remote = FakeSmtp::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Box::new(|_, _| "250 ok".into()),
        Box::new(|_| Fault::OffersChunking),
    );
    let s = Server::start(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{}\n",
        remote.addr.port()
    ));
    let mut big = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    for i in 0..3000 {
        big.extend_from_slice(
            format!("..line {i} of a message too big for one chunk\r\n").as_bytes(),
        );
    }
    let small = b"From: a@example.org\r\nSubject: small\r\n\r\nHello.\r\n..one dot queued\r\n";
    for body in [&small[..], &big[..]] {
        let mut c = Client::connect(s.addr());
        c.hello();
        let (code, text) = c.mail("a@example.org", &["bob@remote.test"], body);
        assert_eq!(code, 250, "{text}");
        c.cmd("QUIT");
    }
    s.wait_for("both at the remote", || remote.received().len() == 2);
    let got = remote.received();
    for (g, body) in got.iter().zip([&small[..], &big[..]]) {
        let at = g.data.windows(7).position(|w| w == b"\r\nFrom:").unwrap();
        // What DATA would have un-stuffed: the dots as they are.
        let sent = String::from_utf8_lossy(body).replace("\r\n..", "\r\n.");
        assert!(
            String::from_utf8_lossy(&g.data[at + 2..]) == sent,
            "not as queued"
        );
        assert!(
            g.commands.last().unwrap().ends_with(" LAST"),
            "{:?}",
            g.commands
        );
    }
    assert!(
        got[1]
            .commands
            .iter()
            .filter(|c| c.starts_with("BDAT"))
            .count()
            >= 2
    );
}

/// Between chunks, commands that are not BDAT, RSET or QUIT are errors:
/// `max_errors` of them end the session, as anywhere else.
#[test]
fn junk_between_chunks_counts_towards_max_errors() {
    let s = Server::start("max_errors = 3\n");
    let mut c = ready(&s);
    chunk(&mut c, &BODY[..20], false);
    assert_eq!(c.reply().0, 250);
    for _ in 0..4 {
        assert_eq!(c.cmd("VRFY alice").0, 503);
    }
    assert_eq!(c.cmd("NOOP").0, 421);
    assert!(c.rest().is_empty(), "closed");
    assert!(s.queued().is_empty());
}
