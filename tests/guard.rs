//! Guarding the door: DNS blocklists, reverse DNS, sender domains, name
//! checks and rate limits, against a real server process and the tests'
//! DNS server on loopback. Outside clients connect from 127.0.0.9 and
//! 127.0.0.10; 127.0.0.1 is in relay_networks.

mod common;

use std::net::IpAddr;

use common::dns::TestDns;
use common::{shared_port, Client, Server};

const OUTSIDE: [u8; 4] = [127, 0, 0, 9];
const OTHER: [u8; 4] = [127, 0, 0, 10];

fn server(dns: &TestDns, extra: &str) -> Server {
    let port = shared_port(&[[127, 0, 0, 1]]);
    Server::start_at(
        [127, 0, 0, 1],
        port,
        &format!("dns_servers = {}\ndns_timeout = 1s\n{extra}", dns.addr),
    )
}

/// EHLO and MAIL from `ip`, then the reply to each RCPT.
fn rcpts(s: &Server, from_ip: [u8; 4], sender: &str, to: &[&str]) -> Vec<(u16, String)> {
    let mut c = Client::connect_from(s.addr(), from_ip);
    c.hello();
    assert_eq!(c.cmd(&format!("MAIL FROM:<{sender}>")).0, 250);
    let out = to
        .iter()
        .map(|t| c.cmd(&format!("RCPT TO:<{t}>")))
        .collect();
    c.cmd("QUIT");
    out
}

#[test]
fn a_listed_client_is_refused_at_rcpt_and_still_reaches_postmaster() {
    let dns = TestDns::start();
    dns.a("9.0.0.127.bl.test", [127, 0, 0, 2].into());
    dns.txt(
        "9.0.0.127.bl.test",
        "listed for testing, see https://bl.test/9",
    );
    // This zone lists 127.0.0.10 with a code the filter does not count.
    dns.a("10.0.0.127.codes.test", [127, 0, 0, 4].into());
    let s = server(&dns, "dnsbl_zones = codes.test=127.0.0.[2..3], bl.test\n");
    let r = rcpts(
        &s,
        OUTSIDE,
        "a@far.test",
        &["alice@satchel.test", "postmaster@satchel.test"],
    );
    assert_eq!(r[0].0, 554, "{r:?}");
    assert!(
        r[0].1.contains("5.7.1 Service unavailable; Client host [127.0.0.9] blocked using bl.test; listed for testing, see https://bl.test/9"),
        "{r:?}"
    );
    assert_eq!(r[1].0, 250, "{r:?}");
    let r = rcpts(&s, OTHER, "a@far.test", &["alice@satchel.test"]);
    assert_eq!(r[0].0, 250, "filtered out: {r:?}");
    // relay_networks are not asked about.
    let before = dns.queries();
    let r = rcpts(&s, [127, 0, 0, 1], "a@far.test", &["alice@satchel.test"]);
    assert_eq!(r[0].0, 250, "{r:?}");
    assert_eq!(dns.queries(), before);
    assert!(
        s.log().contains("dnsbl: [127.0.0.9] listed in bl.test"),
        "{}",
        s.log()
    );
}

#[test]
fn a_blocklist_that_does_not_answer_lists_nobody() {
    let dns = TestDns::start();
    dns.silent("9.0.0.127.slow.test", true);
    dns.servfail("9.0.0.127.broken.test", true);
    let s = server(&dns, "dnsbl_zones = slow.test, broken.test\n");
    let r = rcpts(&s, OUTSIDE, "a@far.test", &["alice@satchel.test"]);
    assert_eq!(r[0].0, 250, "{r:?}");
    let log = s.log();
    assert!(
        log.contains("dnsbl slow.test: look-up of [127.0.0.9] failed"),
        "{log}"
    );
    assert!(
        log.contains("dnsbl broken.test: look-up of [127.0.0.9] failed"),
        "{log}"
    );
}

#[test]
fn sender_domains_that_cannot_take_a_bounce_are_refused() {
    let dns = TestDns::start();
    dns.mx("ok.test", 10, "mx.ok.test");
    dns.a("mx.ok.test", [127, 0, 0, 50].into());
    dns.a("bare.test", [127, 0, 0, 51].into());
    dns.mx("nullmx.test", 0, ".");
    dns.txt("txtonly.test", "v=spf1 -all"); // it exists, but takes no mail
    dns.servfail("broken.test", true);
    let s = server(&dns, "reject_unknown_sender_domain = yes\n");
    let code = |sender: &str| rcpts(&s, OUTSIDE, sender, &["alice@satchel.test"]).remove(0);
    assert_eq!(code("a@ok.test").0, 250);
    assert_eq!(code("a@bare.test").0, 250, "an A record will do");
    assert_eq!(code("").0, 250, "the null sender");
    let nx = code("a@nowhere.test");
    assert_eq!(nx.0, 550, "{nx:?}");
    assert!(
        nx.1.starts_with("5.1.8 <a@nowhere.test>: Sender address rejected: Domain not found"),
        "{nx:?}"
    );
    let null = code("a@nullmx.test");
    assert_eq!(null.0, 550, "{null:?}");
    assert!(null.1.starts_with("5.7.27 "), "{null:?}");
    let nodata = code("a@txtonly.test");
    assert_eq!(nodata.0, 550, "{nodata:?}");
    let temp = code("a@broken.test");
    assert_eq!(temp.0, 450, "{temp:?}");
    assert!(temp.1.starts_with("4.1.8 "), "{temp:?}");
    // Trusted clients are not checked.
    let r = rcpts(
        &s,
        [127, 0, 0, 1],
        "a@nowhere.test",
        &["alice@satchel.test"],
    );
    assert_eq!(r[0].0, 250, "{r:?}");
}

#[test]
fn clients_without_forward_confirmed_reverse_dns_get_450() {
    let dns = TestDns::start();
    let (good, liar): (IpAddr, IpAddr) =
        ("127.0.0.9".parse().unwrap(), "127.0.0.10".parse().unwrap());
    dns.ptr(good, "host.client.test");
    dns.a("host.client.test", [127, 0, 0, 9].into());
    dns.ptr(liar, "mail.bank.test");
    dns.a("mail.bank.test", [127, 0, 0, 99].into());
    let s = server(&dns, "reject_unknown_client_hostname = yes\n");
    assert_eq!(
        rcpts(&s, OUTSIDE, "a@far.test", &["alice@satchel.test"])[0].0,
        250
    );
    let r = rcpts(
        &s,
        OTHER,
        "a@far.test",
        &["alice@satchel.test", "postmaster@satchel.test"],
    );
    assert_eq!(r[0].0, 450, "{r:?}");
    assert_eq!(
        r[0].1,
        "4.7.25 Client host rejected: cannot find your hostname, [127.0.0.10]"
    );
    assert_eq!(r[1].0, 250, "postmaster: {r:?}");
    // No PTR at all.
    let r = rcpts(&s, [127, 0, 0, 11], "a@far.test", &["alice@satchel.test"]);
    assert_eq!(r[0].0, 450, "{r:?}");
}

#[test]
fn name_checks_refuse_bad_helo_names_and_unqualified_addresses() {
    let dns = TestDns::start();
    let s = server(
        &dns,
        "reject_invalid_helo_hostname = yes\nreject_non_fqdn_helo_hostname = yes\n\
         reject_non_fqdn_sender = yes\nreject_non_fqdn_recipient = yes\n",
    );
    let helo_then_rcpt = |helo: &str, from: &str, to: &str| {
        let mut c = Client::connect_from(s.addr(), OUTSIDE);
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd(&format!("EHLO {helo}")).0, 250);
        assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        c.cmd(&format!("RCPT TO:<{to}>"))
    };
    assert_eq!(
        helo_then_rcpt("bad!name", "a@far.test", "alice@satchel.test").0,
        501
    );
    assert_eq!(
        helo_then_rcpt("localhost", "a@far.test", "alice@satchel.test").0,
        504
    );
    assert_eq!(
        helo_then_rcpt("client.far.test", "a@far", "alice@satchel.test").0,
        504
    );
    assert_eq!(
        helo_then_rcpt("client.far.test", "a@far.test", "alice@satchel").0,
        504
    );
    assert_eq!(
        helo_then_rcpt("[127.0.0.9]", "a@far.test", "alice@satchel.test").0,
        250
    );
}

#[test]
fn rate_limits_hold_one_client_back_and_not_another() {
    let dns = TestDns::start();
    let s = server(
        &dns,
        "smtpd_client_connection_rate_limit = 3\nsmtpd_client_message_rate_limit = 2\n\
         smtpd_client_recipient_rate_limit = 3\nmax_connections_per_ip = 50\n",
    );
    // Messages: the third MAIL in the window is refused, the session goes on.
    let mut c = Client::connect_from(s.addr(), OUTSIDE);
    c.hello();
    for n in 0..2 {
        assert_eq!(c.cmd("MAIL FROM:<a@far.test>").0, 250, "MAIL {n}");
        assert_eq!(c.cmd("RSET").0, 250);
    }
    let over = c.cmd("MAIL FROM:<a@far.test>");
    assert_eq!(over.0, 452, "{over:?}");
    assert_eq!(over.1, "4.7.1 Error: too much mail from [127.0.0.9]");
    assert_eq!(c.cmd("NOOP").0, 250);
    drop(c);
    // Recipients, from another client (its own counters).
    let r = rcpts(
        &s,
        OTHER,
        "a@far.test",
        &[
            "alice@satchel.test",
            "bob@satchel.test",
            "alice@satchel.test",
            "bob@satchel.test",
        ],
    );
    let codes: Vec<u16> = r.iter().map(|x| x.0).collect();
    assert_eq!(codes, [250, 250, 250, 452], "{r:?}");
    // Connections: OUTSIDE has used one; two more, then no more.
    let mut second = Client::connect_from(s.addr(), OUTSIDE);
    assert_eq!(second.reply().0, 220);
    let mut third = Client::connect_from(s.addr(), OUTSIDE);
    assert_eq!(third.reply().0, 220);
    let mut fourth = Client::connect_from(s.addr(), OUTSIDE);
    let refused = fourth.reply();
    assert_eq!(refused.0, 421, "{refused:?}");
    assert!(
        refused.1.contains("too many connections from [127.0.0.9]"),
        "{refused:?}"
    );
    // relay_networks are exempt from all three.
    for _ in 0..5 {
        let r = rcpts(&s, [127, 0, 0, 1], "a@far.test", &["alice@satchel.test"; 4]);
        assert!(r.iter().all(|x| x.0 == 250), "{r:?}");
    }
}

/// One message from `from_ip`; the queued copy's text.
fn queued_text(s: &Server, from_ip: [u8; 4], sender: &str, subject: &str) -> String {
    let mut c = Client::connect_from(s.addr(), from_ip);
    c.hello();
    let body = format!("Subject: {subject}\r\n\r\nx\r\n");
    let (code, text) = c.mail(sender, &["alice@satchel.test"], body.as_bytes());
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    String::from_utf8_lossy(&s.message(&id)).into_owned()
}

#[test]
fn spf_results_are_tagged_and_fails_refused_when_asked() {
    let dns = TestDns::start();
    dns.txt("far.test", "v=spf1 ip4:127.0.0.9 -all");
    dns.txt("soft.test", "v=spf1 ~all");
    dns.txt("helo.far.test", "v=spf1 a -all");
    dns.a("helo.far.test", [127, 0, 0, 10].into());
    let s = server(&dns, "spf_policy = tag\n");
    let pass = queued_text(&s, OUTSIDE, "a@far.test", "pass");
    assert!(
        pass.starts_with("Received-SPF: pass (mx.satchel.test: domain of a@far.test designates 127.0.0.9 as permitted sender)\r\n\tclient-ip=127.0.0.9; envelope-from=\"a@far.test\"; helo=client.test;\r\n\tidentity=mailfrom; receiver=mx.satchel.test;\r\nReceived: from client.test"),
        "{pass}"
    );
    let fail = queued_text(&s, OTHER, "a@far.test", "fail, tagged");
    assert!(fail.starts_with("Received-SPF: fail "), "{fail}");
    assert!(queued_text(&s, OTHER, "a@soft.test", "soft").starts_with("Received-SPF: softfail "));
    assert!(queued_text(&s, OTHER, "a@none.test", "none").starts_with("Received-SPF: none "));
    let s = server(&dns, "spf_policy = reject_fail\n");
    let r = rcpts(
        &s,
        OTHER,
        "a@far.test",
        &["alice@satchel.test", "postmaster@satchel.test"],
    );
    assert_eq!(r[0].0, 550, "{r:?}");
    assert!(
        r[0].1
            .starts_with("5.7.23 SPF fail: [127.0.0.10] may not send mail from far.test"),
        "{r:?}"
    );
    assert_eq!(r[1].0, 250, "{r:?}");
    // The null sender: HELO is the identity (RFC 7208 §2.3).
    let mut c = Client::connect_from(s.addr(), OUTSIDE);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO helo.far.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<>").0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<alice@satchel.test>").0,
        550,
        "127.0.0.9 is not helo.far.test's address"
    );
    // Trusted clients are not checked.
    let r = rcpts(&s, [127, 0, 0, 1], "a@far.test", &["alice@satchel.test"]);
    assert_eq!(r[0].0, 250, "{r:?}");
}

/// A message signed by satchel's own signer for example.test (Ed25519),
/// and the key's TXT record.
#[cfg(feature = "tls")]
fn signed_message(body: &str) -> (Vec<u8>, String) {
    let (pem, record) = satchel::dkim::generate_ed25519().unwrap();
    let dir = common::TempDir::new("guard-dkim");
    std::fs::write(dir.0.join("k.pem"), pem).unwrap();
    let signer =
        satchel::dkim::Signer::parse("example.test sel k.pem\n", "k", Some(&dir.0)).unwrap();
    let msg = format!("From: Alice <alice@example.test>\r\nTo: alice@satchel.test\r\nSubject: signed\r\n\r\n{body}\r\n");
    let sig = signer
        .sign(&mut msg.as_bytes(), 1_700_000_000)
        .unwrap()
        .unwrap();
    ((sig + &msg).into_bytes(), record)
}

#[cfg(feature = "tls")]
#[test]
fn dkim_and_dmarc_results_go_into_one_authentication_results_field() {
    let dns = TestDns::start();
    let (msg, record) = signed_message("hello");
    dns.txt("sel._domainkey.example.test", &record);
    dns.txt("_dmarc.example.test", "v=DMARC1; p=reject");
    dns.txt("example.test", "v=spf1 ip4:127.0.0.9 -all");
    let s = server(&dns, "dkim_verify = yes\ndmarc_policy = honour\n");
    // Signed, from an address SPF allows; a forged result with our name is dropped.
    let forged = [
        &b"Authentication-Results: mx.satchel.test; dkim=pass header.d=bank.test\r\n"[..],
        &msg,
    ]
    .concat();
    let mut c = Client::connect_from(s.addr(), OUTSIDE);
    c.hello();
    let (code, text) = c.mail("alice@example.test", &["alice@satchel.test"], &forged);
    assert_eq!(code, 250, "{text}");
    let copy = String::from_utf8_lossy(&s.message(&common::queue_id(&text))).into_owned();
    let ar = copy.split("\r\nReceived:").next().unwrap();
    assert!(ar.starts_with("Authentication-Results: mx.satchel.test;\r\n\tspf=pass smtp.mailfrom=example.test;\r\n\tdkim=pass header.d=example.test header.s=sel header.b="), "{copy}");
    assert!(
        ar.ends_with("dmarc=pass (p=reject) header.from=example.test"),
        "{copy}"
    );
    assert!(
        !copy.contains("bank.test"),
        "the forged field is gone: {copy}"
    );
    assert_eq!(copy.matches("Authentication-Results:").count(), 1);
    // Tampered, and from an address SPF refuses: DMARC fails, p=reject refuses it.
    let tampered = String::from_utf8(msg.clone())
        .unwrap()
        .replace("hello", "hellO");
    let mut c = Client::connect_from(s.addr(), OTHER);
    c.hello();
    let (code, text) = c.mail(
        "alice@example.test",
        &["alice@satchel.test"],
        tampered.as_bytes(),
    );
    assert_eq!(code, 550, "{text}");
    assert_eq!(
        text,
        "5.7.1 Email rejected per DMARC policy for example.test"
    );
    // The same, signed but from the wrong address: DKIM alone passes DMARC.
    let mut c = Client::connect_from(s.addr(), OTHER);
    c.hello();
    let (code, text) = c.mail("alice@example.test", &["alice@satchel.test"], &msg);
    assert_eq!(code, 250, "{text}");
    let copy = String::from_utf8_lossy(&s.message(&common::queue_id(&text))).into_owned();
    assert!(
        copy.contains("spf=fail smtp.mailfrom=example.test;"),
        "{copy}"
    );
    assert!(copy.contains("dmarc=pass (p=reject)"), "{copy}");
}

#[cfg(feature = "tls")]
#[test]
fn dmarc_quarantine_holds_or_tags_as_configured() {
    let dns = TestDns::start();
    dns.txt("_dmarc.example.test", "v=DMARC1; p=quarantine");
    let unsigned = b"From: alice@example.test\r\nSubject: unsigned\r\n\r\nx\r\n";
    let s = server(&dns, "dmarc_policy = honour\n");
    let mut c = Client::connect_from(s.addr(), OUTSIDE);
    c.hello();
    let (code, text) = c.mail("a@example.test", &["alice@satchel.test"], unsigned);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    s.wait_for("the hold", || {
        s.log().contains(&format!("{id}: held (DMARC quarantine)"))
    });
    assert!(s.spool().join("hold").join(&id).exists());
    let s = server(
        &dns,
        "dmarc_policy = honour\ndmarc_quarantine = X-Spam-Flag: YES\n",
    );
    let mut c = Client::connect_from(s.addr(), OUTSIDE);
    c.hello();
    let (code, text) = c.mail("a@example.test", &["alice@satchel.test"], unsigned);
    assert_eq!(code, 250, "{text}");
    let copy = String::from_utf8_lossy(&s.message(&common::queue_id(&text))).into_owned();
    assert!(copy.contains("dkim=none;\r\n\tdmarc=fail (p=quarantine) header.from=example.test\r\nX-Spam-Flag: YES\r\n"), "{copy}");
}

#[cfg(feature = "tls")]
#[test]
fn dmarc_reads_the_real_author_and_results_cannot_be_smuggled_in() {
    let dns = TestDns::start();
    dns.txt("_dmarc.example.test", "v=DMARC1; p=reject");
    dns.txt("evil.test", "v=spf1 ip4:127.0.0.9 -all");
    let s = server(&dns, "dmarc_policy = honour\n");
    let send = |from_field: &str, sender: &str| {
        let mut c = Client::connect_from(s.addr(), OUTSIDE);
        c.hello();
        let body = format!("From: {from_field}\r\nSubject: s\r\n\r\nx\r\n");
        c.mail(sender, &["alice@satchel.test"], body.as_bytes())
    };
    // The address inside the quoted display name is not the author.
    let (code, text) = send(
        "\"a@evil.test <a@evil.test>\" <boss@example.test>",
        "a@evil.test",
    );
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.7.1 Email rejected per DMARC policy for example.test"
        )
    );
    // Authors of two domains: refused with honour.
    let (code, text) = send("a@evil.test, boss@example.test", "a@evil.test");
    assert_eq!(
        (code, text.as_str()),
        (550, "5.7.1 From: names authors of several domains")
    );
    // A HELO name cannot write properties into our field.
    let mut c = Client::connect_from(s.addr(), OUTSIDE);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO x;dkim=pass;dmarc=pass").0, 250);
    let (code, text) = c.mail(
        "",
        &["alice@satchel.test"],
        b"From: a@evil.test\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let copy = String::from_utf8_lossy(&s.message(&common::queue_id(&text))).into_owned();
    assert!(copy.contains("smtp.helo=x?dkim=pass?dmarc=pass;"), "{copy}");
}
