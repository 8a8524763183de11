//! Who may send as whom: after AUTH, a login uses only its own envelope
//! senders (`sender_login_file`, Postfix's smtpd_sender_login_maps).

mod common;

use common::{free_port, Client, Server, TempDir};
use std::process::Command;

fn hash(password: &str) -> String {
    let out = Command::new("openssl")
        .args(["passwd", "-6", password])
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A server with logins dev and ops (password "pw"), the login table,
/// and `extra` settings.
fn server(dir: &TempDir, extra: &str) -> Server {
    let users = dir.0.join("users");
    let logins = dir.0.join("sender_logins");
    std::fs::write(&users, format!("dev:{}\nops:{}\n", hash("pw"), hash("pw"))).unwrap();
    std::fs::write(
        &logins,
        "# login, then its senders\ndev dev@dev.test, @ops.test\n",
    )
    .unwrap();
    Server::start_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "auth_users_file = {}\nauth_over_plaintext = yes\nsender_login_file = {}\n{extra}",
            users.display(),
            logins.display()
        ),
    )
}

fn login(s: &Server, user: &str) -> Client {
    let mut c = Client::connect(s.addr());
    c.hello();
    let token = satchel::smtp::base64::encode(format!("\0{user}\0pw").as_bytes());
    assert_eq!(c.cmd(&format!("AUTH PLAIN {token}")).0, 235);
    c
}

fn mail_from(c: &mut Client, from: &str) -> (u16, String) {
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if r.0 == 250 {
        assert_eq!(c.cmd("RSET").0, 250);
    }
    r
}

#[test]
fn an_authenticated_login_sends_only_as_its_own_addresses() {
    let dir = TempDir::new("senderlogin");
    let s = server(&dir, "");
    let mut dev = login(&s, "dev");
    assert_eq!(mail_from(&mut dev, "dev@dev.test").0, 250);
    assert_eq!(mail_from(&mut dev, "DEV@Dev.Test").0, 250);
    assert_eq!(mail_from(&mut dev, "anyone@ops.test").0, 250);
    assert_eq!(mail_from(&mut dev, "").0, 250, "bounces stay possible");
    let (code, text) = mail_from(&mut dev, "boss@dev.test");
    assert_eq!(code, 553);
    assert_eq!(
        text,
        "5.7.1 <boss@dev.test>: Sender address rejected: not owned by user dev"
    );
    // A login the table does not list keeps today's behaviour.
    let mut ops = login(&s, "ops");
    assert_eq!(mail_from(&mut ops, "whoever@example.test").0, 250);
    // Without AUTH the table does not apply (relay control does).
    let mut anon = Client::connect(s.addr());
    anon.hello();
    assert_eq!(mail_from(&mut anon, "boss@dev.test").0, 250);
}

#[test]
fn with_reject_sender_login_mismatch_an_unlisted_login_sends_as_nobody() {
    let dir = TempDir::new("senderlogin2");
    let s = server(&dir, "reject_sender_login_mismatch = yes\n");
    let mut ops = login(&s, "ops");
    assert_eq!(mail_from(&mut ops, "whoever@example.test").0, 553);
    assert_eq!(mail_from(&mut ops, "ops@ops.test").0, 553);
    let mut dev = login(&s, "dev");
    assert_eq!(mail_from(&mut dev, "dev@dev.test").0, 250);
    // A broken table is named with its file and line.
    std::fs::write(
        dir.0.join("sender_logins"),
        "dev dev@dev.test\nops not-an-address\n",
    )
    .unwrap();
    let out = s.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sender_logins:2: expected user@domain or @domain, found 'not-an-address'"),
        "{err}"
    );
}

/// A host with virtual aliases (a local domain's `info@`, a virtual-only
/// domain that lists its addresses, a catch-all domain) and `+` extensions.
fn virtual_host(dir: &TempDir) -> Server {
    let table = dir.0.join("virtual");
    std::fs::write(
        &table,
        "# addresses that are not accounts\n\
         info@satchel.test alice, bob\n\
         virt.test anything\n\
         team@virt.test info@satchel.test\n\
         @shop.test alice\n",
    )
    .unwrap();
    Server::start_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "defer_delivery = no\nvirtual_alias_file = {}\nrecipient_delimiter = +\n",
            table.display()
        ),
    )
}

#[test]
fn virtual_aliases_catch_alls_and_extensions_reach_the_right_mailboxes() {
    let dir = TempDir::new("virtual");
    let s = virtual_host(&dir);
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<x@far.test>").0, 250);
    for ok in [
        "info@satchel.test",
        "alice+lists@satchel.test",
        "team@virt.test",
        "whoever@shop.test",
    ] {
        assert_eq!(c.cmd(&format!("RCPT TO:<{ok}>")).0, 250, "{ok}");
    }
    let (code, text) = c.cmd("RCPT TO:<nobody@virt.test>");
    assert_eq!(code, 550);
    assert_eq!(
        text,
        "5.1.1 <nobody@virt.test>: Recipient address rejected: User unknown in virtual alias table"
    );
    assert_eq!(c.cmd("RCPT TO:<carol+x@satchel.test>").0, 550);
    // What routing shows for them, without sending.
    let route = |a: &str| String::from_utf8_lossy(&s.run(&["route", a]).stdout).into_owned();
    assert_eq!(
        route("team@virt.test"),
        "team@virt.test: expands to alice@satchel.test, bob@satchel.test\n  \
         alice@satchel.test: local: mailbox of alice@satchel.test\n  \
         bob@satchel.test: local: mailbox of bob@satchel.test\n"
    );
    assert_eq!(
        route("alice+lists@satchel.test"),
        "alice+lists@satchel.test: local: mailbox of alice+lists@satchel.test\n"
    );
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: to all of them\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    // alice through info@, alice+lists@, team@ and the catch-all: one copy.
    s.wait_for("alice's and bob's copies", || {
        s.maildir("alice").len() == 1 && s.maildir("bob").len() == 1 && s.queued().is_empty()
    });
    assert!(!s.mail_dir().join("alice+lists").exists());
    // An extension alone: alice's mailbox, the whole address in Delivered-To.
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, _) = c.mail(
        "x@far.test",
        &["Alice+Lists@satchel.test"],
        b"Subject: tagged\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    s.wait_for("the tagged copy", || s.maildir("alice").len() == 2);
    let tagged = s
        .maildir("alice")
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|t| t.contains("Subject: tagged"))
        .unwrap();
    assert!(
        tagged.starts_with("Return-Path: <x@far.test>\nDelivered-To: Alice+Lists@satchel.test\n"),
        "{tagged}"
    );
}

#[test]
fn a_virtual_alias_loop_bounces_and_a_broken_table_is_refused() {
    let dir = TempDir::new("virtualloop");
    let table = dir.0.join("virtual");
    std::fs::write(&table, "a@virt.test b@virt.test\nb@virt.test a@virt.test\n").unwrap();
    let s = Server::start_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "defer_delivery = no\nvirtual_alias_file = {}\n",
            table.display()
        ),
    );
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "alice@satchel.test",
        &["a@virt.test"],
        b"Subject: loop\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    s.wait_for("the bounce to alice", || s.maildir("alice").len() == 1);
    let bounce = std::fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(bounce.contains("virtual alias loop"), "{bounce}");
    std::fs::write(&table, "a@virt.test b@virt.test\nnot-a-key\n").unwrap();
    let out = s.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("virtual:2: 'not-a-key' has no target"),
        "{err}"
    );
}

/// A cron job's `sendmail -t` as root on a host named `vm`: the sender
/// leaves as root@example.test (myorigin vm.example.test, masqueraded to
/// example.test) in the envelope and in From:, and is DKIM-signed there.
#[cfg(feature = "tls")]
#[test]
fn a_cron_mail_from_root_at_vm_leaves_as_root_at_the_domain_and_signed() {
    let (vm_ip, far_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = common::shared_port(&[vm_ip, far_ip]);
    let dir = TempDir::new("cron");
    let key = dir.0.join("ed.key");
    let out = Command::new(common::BIN)
        .args(["dkim-keygen", "example.test", "ed", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let keys = dir.0.join("dkim_keys");
    std::fs::write(&keys, format!("example.test ed {}\n", key.display())).unwrap();
    let far = Server::start_at(
        far_ip,
        port,
        "hostname = far.test\nlocal_domains = far.test\nlocal_users = admin\ndefer_delivery = no\n",
    );
    let vm = Server::start_at(
        vm_ip,
        port,
        &format!(
            "hostname = vm\nlocal_domains = vm, localhost\nmyorigin = vm.example.test\n\
             masquerade_domains = example.test\ndefer_delivery = no\n\
             relayhost = [127.0.0.3]:{port}\ndkim_keys_file = {}\n",
            keys.display()
        ),
    );
    let out = vm.sendmail(
        &["-t"],
        b"To: admin@far.test\nSubject: cron <root@vm> /usr/bin/backup\n\nbackup done\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    far.wait_for("the cron mail", || far.maildir("admin").len() == 1);
    let got = std::fs::read_to_string(&far.maildir("admin")[0]).unwrap();
    assert!(
        got.starts_with("Return-Path: <root@example.test>\n"),
        "{got}"
    );
    assert!(got.contains("\nFrom: root@example.test\n"), "{got}");
    assert!(
        got.contains("Subject: cron <root@vm> /usr/bin/backup"),
        "{got}"
    );
    assert!(
        got.contains(
            "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.test; s=ed;"
        ),
        "{got}"
    );
}

#[test]
fn canonical_tables_rewrite_envelope_and_the_headers_of_trusted_mail() {
    let dir = TempDir::new("canonical");
    let senders = dir.0.join("sender_canonical");
    let rcpts = dir.0.join("recipient_canonical");
    std::fs::write(&senders, "root admin@example.test\n@old.test @new.test\n").unwrap();
    std::fs::write(&rcpts, "joe@satchel.test alice@satchel.test\n").unwrap();
    let s = Server::start_at(
        [127, 0, 0, 1],
        free_port(),
        &format!(
            "defer_delivery = no\nsender_canonical_file = {}\nrecipient_canonical_file = {}\n",
            senders.display(),
            rcpts.display()
        ),
    );
    // From relay_networks (127.0.0.1): envelope and headers.
    let mut c = Client::connect(s.addr());
    c.hello();
    let msg = b"From: \"The Root\" <root@satchel.test>\r\nReply-To: desk@old.test\r\nTo: joe, bob\r\nSubject: root@satchel.test stays\r\n\r\nbody\r\n";
    let (code, text) = c.mail("root@satchel.test", &["joe@satchel.test"], msg);
    assert_eq!(code, 250, "{text}");
    s.wait_for("alice's copy", || s.maildir("alice").len() == 1);
    let got = std::fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(
        got.starts_with("Return-Path: <admin@example.test>\nDelivered-To: alice@satchel.test\n"),
        "{got}"
    );
    assert!(
        got.contains("\nFrom: \"The Root\" <admin@example.test>\n"),
        "{got}"
    );
    assert!(got.contains("\nReply-To: desk@new.test\n"), "{got}");
    assert!(
        got.contains("\nTo: alice@satchel.test, bob@satchel.test\n"),
        "{got}"
    );
    assert!(
        got.contains("\nSubject: root@satchel.test stays\n"),
        "{got}"
    );
    // From outside: the envelope is rewritten, the headers are not.
    let mut c = Client::connect_from(s.addr(), [127, 0, 0, 9]);
    c.hello();
    let msg = b"From: root@satchel.test\r\nTo: joe\r\nSubject: outside\r\n\r\nbody\r\n";
    assert_eq!(
        c.mail("root@satchel.test", &["joe@satchel.test"], msg).0,
        250
    );
    s.wait_for("the second copy", || s.maildir("alice").len() == 2);
    let outside = s
        .maildir("alice")
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|t| t.contains("Subject: outside"))
        .unwrap();
    assert!(
        outside.starts_with("Return-Path: <admin@example.test>\n"),
        "{outside}"
    );
    assert!(
        outside.contains("\nFrom: root@satchel.test\nTo: joe\n"),
        "{outside}"
    );
    // What routing shows: the rewriting, then the route.
    let out = s.run(&["route", "joe@satchel.test", "--sender", "root@satchel.test"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "joe@satchel.test: rewritten to alice@satchel.test\n\
         sender <root@satchel.test>: rewritten to <admin@example.test>\n\
         alice@satchel.test: local: mailbox of alice@satchel.test\n"
    );
}

/// Without the `tls` feature there is no DKIM: a key table is refused
/// with the reason, not ignored.
#[cfg(not(feature = "tls"))]
#[test]
fn without_tls_a_dkim_key_table_is_refused_with_the_reason() {
    let dir = TempDir::new("notls");
    let keys = dir.0.join("dkim_keys");
    std::fs::write(&keys, "example.test ed /nonexistent.key\n").unwrap();
    let s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!("dkim_keys_file = {}\n", keys.display()),
    );
    let out = s.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DKIM signing needs the tls build feature"),
        "{err}"
    );
}

#[test]
fn bare_names_from_trusted_clients_get_myorigin_and_others_need_a_domain() {
    let s = Server::start("defer_delivery = no\nmyorigin = satchel.test\n");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "cron",
        &["alice"],
        b"To: alice\r\nSubject: bare\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    s.wait_for("alice's copy", || s.maildir("alice").len() == 1);
    let got = std::fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(
        got.starts_with("Return-Path: <cron@satchel.test>\nDelivered-To: alice@satchel.test\n"),
        "{got}"
    );
    assert!(got.contains("\nTo: alice@satchel.test\n"), "{got}");
    let mut outside = Client::connect_from(s.addr(), [127, 0, 0, 9]);
    outside.hello();
    assert_eq!(outside.cmd("MAIL FROM:<cron>").0, 501);
    assert_eq!(outside.cmd("MAIL FROM:<x@far.test>").0, 250);
    assert_eq!(outside.cmd("RCPT TO:<alice>").0, 501);
}
