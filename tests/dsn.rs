//! Delivery status notifications a sender asks for (RFC 3461): DSN
//! parameters taken by the server, kept in the queue, passed on to a hop
//! that offers DSN, and the notices (delivered, relayed, expanded,
//! failed with RET=FULL, none for NEVER) read back by Python's email
//! package.

mod common;

use common::fake::{FakeSmtp, Fault};
use common::{free_port, Client, Server};
use std::fs;
use std::process::Command;

/// One transaction with DSN parameters on MAIL and on each RCPT.
fn send_dsn(s: &Server, mail: &str, rcpts: &[&str], subject: &str) {
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<alice@satchel.test>{mail}")).0,
        250
    );
    for r in rcpts {
        let (code, text) = c.cmd(&format!("RCPT TO:{r}"));
        assert_eq!(code, 250, "{r}: {text}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(format!("Subject: {subject}\r\n\r\nthe body of {subject}\r\n.\r\n").as_bytes());
    assert_eq!(c.reply().0, 250);
    c.cmd("QUIT");
}

/// The notices in alice's mailbox (not her other mail), each as Python's
/// email package reads it: the subject, the parts' types, then per block
/// the DSN fields.
fn notices(s: &Server) -> Vec<String> {
    let script = "import email,sys\n\
        m=email.message_from_binary_file(open(sys.argv[1],'rb'))\n\
        print('Subject', m['Subject'])\n\
        print('Parts', ' '.join(p.get_content_type() for p in m.walk()))\n\
        st=[p for p in m.walk() if p.get_content_type()=='message/delivery-status'][0]\n\
        for b in st.get_payload():\n    \
        for k in ('Original-Envelope-Id','Original-Recipient','Final-Recipient','Action','Status'):\n        \
        if b[k]: print(k, b[k])\n";
    let mut all: Vec<String> = s
        .maildir("alice")
        .iter()
        .filter(|p| {
            let m = fs::read_to_string(p).unwrap();
            m.contains("report-type=delivery-status")
        })
        .map(|p| {
            let out = Command::new("python3")
                .args(["-c", script])
                .arg(p)
                .output()
                .expect("python3");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    all.sort();
    all
}

#[test]
fn the_server_offers_dsn_and_keeps_the_requests_in_the_queue() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr());
    let greeting = c.reply();
    assert_eq!(greeting.0, 220, "{greeting:?}");
    let (code, ehlo) = c.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("DSN"), "{ehlo}");
    let (code, text) = c.cmd("MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2B314");
    assert_eq!(code, 250, "{text}");
    let (code, text) =
        c.cmd("RCPT TO:<bob@satchel.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+40satchel.test");
    assert_eq!(code, 250, "{text}");
    // Bad values are refused, and the transaction goes on.
    for bad in [
        "RCPT TO:<bob@satchel.test> NOTIFY=NEVER,SUCCESS",
        "RCPT TO:<bob@satchel.test> ORCPT=rfc822;a+4",
        "RCPT TO:<bob@satchel.test> NOTIFY=SUCCESS NOTIFY=DELAY",
    ] {
        assert_eq!(c.cmd(bad).0, 501, "{bad}");
    }
    assert_eq!(c.cmd("RCPT TO:<alice@satchel.test> NOTIFY=NEVER").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: kept\r\n\r\nbody\r\n.\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let env = s.envelope(&common::queue_id(&text));
    assert!(env.contains("\nret HDRS\nenvid QQ+2B314\n"), "{env}");
    assert!(
        env.contains(
            "rcpt pending <bob@satchel.test>\ndsn SUCCESS,DELAY rfc822;Bob+40satchel.test\n"
        ),
        "{env}"
    );
    assert!(
        env.contains("rcpt pending <alice@satchel.test>\ndsn NEVER\n"),
        "{env}"
    );
}

#[test]
fn success_to_a_mailbox_here_is_delivered_and_to_a_hop_without_dsn_relayed() {
    let remote = FakeSmtp::start(
        "127.0.0.1:0".parse().unwrap(),
        Box::new(|_, _| "250 ok".into()),
    );
    let s = Server::start(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{}\n",
        remote.addr.port()
    ));
    send_dsn(
        &s,
        " ENVID=trip+2B1",
        &[
            "<bob@satchel.test> NOTIFY=SUCCESS ORCPT=rfc822;Robert+40satchel.test",
            "<carol@remote.test> NOTIFY=SUCCESS,FAILURE",
        ],
        "both",
    );
    s.wait_for("bob's copy", || s.maildir("bob").len() == 1);
    s.wait_for("the notice", || s.maildir("alice").len() == 1);
    let n = notices(&s).join("");
    assert!(n.contains("Subject Successful Mail Delivery Report"), "{n}");
    assert!(n.contains("Original-Envelope-Id trip+1\n"), "{n}");
    assert!(
        n.contains("Original-Recipient rfc822;Robert@satchel.test\nFinal-Recipient rfc822; bob@satchel.test\nAction delivered\nStatus 2."),
        "{n}"
    );
    assert!(
        n.contains("Final-Recipient rfc822; carol@remote.test\nAction relayed\nStatus 2."),
        "{n}"
    );
    // A hop without DSN hears none of it.
    let got = &remote.received()[0];
    assert!(
        !got.commands
            .iter()
            .any(|c| c.contains("NOTIFY") || c.contains("ENVID")),
        "{:?}",
        got.commands
    );
}

#[test]
fn a_hop_that_offers_dsn_gets_the_requests_and_no_notice_is_sent_here() {
    let remote = FakeSmtp::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Box::new(|_, _| "250 ok".into()),
        Box::new(|_| Fault::OffersDsn),
    );
    let s = Server::start(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{}\n",
        remote.addr.port()
    ));
    send_dsn(
        &s,
        " RET=FULL ENVID=x1",
        &["<carol@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;carol+40remote.test"],
        "passed",
    );
    s.wait_for("the copy at the remote", || remote.received().len() == 1);
    s.wait_for("queue empty", || s.queued().is_empty());
    let got = &remote.received()[0];
    assert!(
        got.commands[0].ends_with(" RET=FULL ENVID=x1"),
        "{:?}",
        got.commands
    );
    assert_eq!(
        got.commands[1],
        "RCPT TO:<carol@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;carol+40remote.test"
    );
    assert!(
        s.maildir("alice").is_empty(),
        "the next hop reports, not us"
    );
    assert!(s.log().contains("status=sent"), "{}", s.log());
}

#[test]
fn never_means_no_bounce_and_ret_full_returns_the_whole_message() {
    let port = free_port();
    let remote = FakeSmtp::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Box::new(|_, _| "550 5.1.1 no such user".into()),
    );
    let s = Server::start(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{}\n",
        remote.addr.port()
    ));
    send_dsn(&s, "", &["<x@remote.test> NOTIFY=NEVER"], "never");
    s.wait_for("the silent failure", || {
        s.log().contains("no non-delivery notice (NOTIFY=NEVER)")
    });
    s.wait_for("queue empty", || s.queued().is_empty());
    assert!(s.maildir("alice").is_empty(), "NOTIFY=NEVER: no bounce");
    send_dsn(&s, " RET=FULL", &["<y@remote.test> NOTIFY=FAILURE"], "full");
    s.wait_for("the bounce", || s.maildir("alice").len() == 1);
    let n = notices(&s).join("");
    assert!(n.contains("Parts multipart/report text/plain message/delivery-status text/plain text/plain message/rfc822 text/plain\n"), "{n}");
    assert!(n.contains("Action failed\nStatus 5.1.1"), "{n}");
    let b = fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(
        b.contains("the body of full"),
        "RET=FULL: the body comes back"
    );
    // Without RET=FULL, the headers only, as before.
    send_dsn(&s, " RET=HDRS", &["<z@remote.test>"], "hdrs");
    s.wait_for("the second bounce", || s.maildir("alice").len() == 2);
    let all: String = s
        .maildir("alice")
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(all.contains("Subject: hdrs") && !all.contains("the body of hdrs"));
}

#[test]
fn an_alias_of_several_targets_is_expanded_and_its_members_keep_the_original() {
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "defer_delivery = no\n");
    fs::write(s.dir.0.join("aliases"), "staff: bob, alice\nboss: bob\n").unwrap();
    s.spawn();
    send_dsn(
        &s,
        "",
        &["<staff@satchel.test> NOTIFY=SUCCESS,FAILURE"],
        "list",
    );
    s.wait_for("bob's copy", || s.maildir("bob").len() == 1);
    // alice: her copy as a member of staff, and one notice.
    s.wait_for("alice's copy and the notice", || {
        s.maildir("alice").len() == 2
    });
    send_dsn(&s, "", &["<boss@satchel.test> NOTIFY=SUCCESS"], "boss");
    s.wait_for("the second notice", || s.maildir("alice").len() == 3);
    let n = notices(&s);
    assert_eq!(n.len(), 2, "{n:?}");
    let n = n.join("");
    // The list answers for its members (RFC 3461 §6.2.7.3); a one-target
    // alias is delivered, with the address the sender used.
    assert!(
        n.contains("Final-Recipient rfc822; staff@satchel.test\nAction expanded\nStatus 2.0.0"),
        "{n}"
    );
    assert!(
        n.contains("Original-Recipient rfc822;boss@satchel.test\nFinal-Recipient rfc822; bob@satchel.test\nAction delivered"),
        "{n}"
    );
    assert!(
        !n.contains("Final-Recipient rfc822; alice@satchel.test"),
        "{n}"
    );
}
