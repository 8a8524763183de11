//! Standing in a mail network: a hub or backup MX that accepts mail for
//! the domains it relays for (`relay_domains`) from anyone, and only
//! those, and hands it to a better MX (RFC 5321 §5.1).

mod common;

use common::dns::TestDns;
use common::{shared_port, Client, Server, TempDir};

const BODY: &[u8] =
    b"From: someone@far.test\r\nSubject: via the backup\r\n\r\nkept, then handed on\r\n";

/// A satchel on `ip` that relays `dest.test` for anyone; 127.0.0.1 (the
/// tests' client) is not in its relay_networks.
fn relay_host(ip: [u8; 4], port: u16, hostname: &str, dns: &TestDns, extra: &str) -> Server {
    Server::start_at(
        ip,
        port,
        &format!(
            "hostname = {hostname}\nlocal_domains = {hostname}\nrelay_domains = dest.test\n\
             relay_networks = 127.0.0.99/32\ndns_servers = {}\nrelay_port = {port}\n\
             defer_delivery = no\n{extra}",
            dns.addr
        ),
    )
}

#[test]
fn a_backup_mx_keeps_mail_while_the_primary_is_down_and_hands_it_over_later() {
    let dns = TestDns::start();
    let (backup_ip, primary_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[backup_ip, primary_ip]);
    dns.mx("dest.test", 10, "primary.dest.test");
    dns.mx("dest.test", 20, "backup.dest.test");
    dns.a("primary.dest.test", primary_ip.into());
    dns.a("backup.dest.test", backup_ip.into());
    let backup = relay_host(backup_ip, port, "backup.dest.test", &dns, "");
    let mut c = Client::connect(backup.addr());
    c.hello();
    // Only the relayed domain: anything else is still refused.
    assert_eq!(c.cmd("MAIL FROM:<someone@far.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<x@elsewhere.test>").0, 554);
    assert_eq!(c.cmd("RCPT TO:<x%elsewhere.test@backup.dest.test>").0, 550);
    // A source route names the final mailbox's domain: still refused.
    assert_eq!(c.cmd("RCPT TO:<@dest.test:x@elsewhere.test>").0, 554);
    assert_eq!(c.cmd("RCPT TO:<x@sub.dest.test>").0, 554, "not subdomains");
    // Routing the sender asks for inside a relayed domain's local part
    // (Postfix's allow_untrusted_routing = no): refused too.
    for trick in [
        "<x%elsewhere.test@dest.test>",
        "<\"x@elsewhere.test\"@dest.test>",
        "<x!elsewhere.test@dest.test>",
    ] {
        let (code, text) = c.cmd(&format!("RCPT TO:{trick}"));
        assert!(code == 550 || code == 554, "{trick}: {code} {text}");
    }
    assert_eq!(c.cmd("RSET").0, 250);
    let (code, text) = c.mail("someone@far.test", &["user@dest.test"], BODY);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    backup.wait_for("the deferral while the primary is down", || {
        backup.log().contains(&format!("{id}: to=<user@dest.test>"))
            && backup.queued() == [id.clone()]
    });
    assert!(backup.log().contains("status=deferred"), "{}", backup.log());
    assert!(!backup.log().contains("bounced"), "{}", backup.log());
    let primary = Server::start_at(
        primary_ip,
        port,
        "hostname = primary.dest.test\nlocal_domains = dest.test\nlocal_users = user\ndefer_delivery = no\n",
    );
    assert!(backup.run(&["queue", "flush"]).status.success());
    primary.wait_for("the primary's copy", || primary.maildir("user").len() == 1);
    backup.wait_for("the backup's queue emptied", || backup.queued().is_empty());
    let text = std::fs::read_to_string(&primary.maildir("user")[0]).unwrap();
    assert!(
        text.starts_with("Return-Path: <someone@far.test>\n"),
        "{text}"
    );
    assert_eq!(text.matches("\nReceived: from ").count(), 2, "{text}");
    assert!(!backup.log().contains("notification"), "no bounce was sent");
}

#[test]
fn the_best_mx_of_a_relayed_domain_keeps_its_mail_instead_of_bouncing_a_loop() {
    let dns = TestDns::start();
    let ip = [127, 0, 0, 2];
    let port = shared_port(&[ip]);
    dns.mx("dest.test", 10, "mx.dest.test");
    dns.a("mx.dest.test", ip.into());
    let s = relay_host(ip, port, "mx.dest.test", &dns, "");
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail("someone@far.test", &["user@dest.test"], BODY);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    s.wait_for("the deferral", || {
        s.log().contains(&format!("{id}: to=<user@dest.test>")) && s.queued() == [id.clone()]
    });
    assert!(
        s.log().contains(
            "status=deferred (451 4.4.6 mail for dest.test: no MX host better than this one"
        ),
        "{}",
        s.log()
    );
    assert!(!s.log().contains("loops back to myself"), "{}", s.log());
}

#[test]
fn a_relay_recipient_table_refuses_unknown_recipients_at_rcpt() {
    let dns = TestDns::start();
    let ip = [127, 0, 0, 2];
    let port = shared_port(&[ip]);
    let dir = TempDir::new("relayrcpt");
    let table = dir.0.join("relay_recipients");
    std::fs::write(&table, "# who exists behind the hub\nalice@dest.test OK\n").unwrap();
    let s = relay_host(
        ip,
        port,
        "hub.test",
        &dns,
        &format!("relay_recipients_file = {}\n", table.display()),
    );
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(c.cmd("MAIL FROM:<someone@far.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<Alice@dest.test>").0, 250);
    let (code, text) = c.cmd("RCPT TO:<bob@dest.test>");
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("5.1.1 <bob@dest.test>: Recipient address rejected: User unknown in relay recipient table"), "{text}");
    // A broken table is refused with its file and line.
    std::fs::write(&table, "alice@dest.test\nnot an address\n").unwrap();
    let out = s.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay_recipients:2: expected user@domain or @domain, found 'not'"),
        "{err}"
    );
}

#[test]
fn a_hub_forwards_by_its_transport_table_and_falls_over_to_the_next_host() {
    let dns = TestDns::start();
    let (hub_ip, inner_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[hub_ip, inner_ip]);
    let dir = TempDir::new("transport");
    let table = dir.0.join("transport");
    // The first host answers nobody: the second takes the mail.
    std::fs::write(
        &table,
        format!(
            "# the mailboxes are on the inner host\n\
             dest.test smtp:[127.0.0.9]:{port}, [127.0.0.3]:{port}\n\
             gone@dest.test error:5.1.1 moved away, no forwarding address\n\
             later@dest.test defer:4.3.2 mailbox being moved\n"
        ),
    )
    .unwrap();
    let inner = Server::start_at(
        inner_ip,
        port,
        "hostname = inner.dest.test\nlocal_domains = dest.test\nlocal_users = user\ndefer_delivery = no\n",
    );
    let hub = relay_host(
        hub_ip,
        port,
        "hub.dest.test",
        &dns,
        &format!("transport_file = {}\n", table.display()),
    );
    let mut c = Client::connect(hub.addr());
    c.hello();
    let rcpts = ["user@dest.test", "gone@dest.test", "later@dest.test"];
    let (code, text) = c.mail("someone@far.test", &rcpts, BODY);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    inner.wait_for("the inner host's copy", || inner.maildir("user").len() == 1);
    let copy = std::fs::read_to_string(&inner.maildir("user")[0]).unwrap();
    assert_eq!(copy.matches("\nReceived: from ").count(), 2, "{copy}");
    hub.wait_for("every recipient settled", || {
        let log = hub.log();
        log.contains(&format!(
            "{id}: to=<user@dest.test>, relay=127.0.0.3[127.0.0.3]"
        )) && log.contains(&format!("{id}: to=<gone@dest.test>, relay=none"))
            && log.contains(&format!("{id}: to=<later@dest.test>, relay=none"))
    });
    let log = hub.log();
    assert!(
        log.contains("status=bounced (550 5.1.1 moved away, no forwarding address)"),
        "{log}"
    );
    assert!(
        log.contains("status=deferred (451 4.3.2 mailbox being moved)"),
        "{log}"
    );
    assert!(
        log.contains("could not take the mail; trying the next host"),
        "{log}"
    );
    // Requeued once the attempt has recorded all three (just after the
    // log lines): waited for, not raced.
    hub.wait_for("kept for the deferred recipient", || {
        hub.queued() == std::slice::from_ref(&id)
    });
    // The listing names where what waits would go.
    let list = String::from_utf8_lossy(&hub.run(&["queue", "list"]).stdout).into_owned();
    assert!(list.contains(&id), "{list}");
    assert!(
        list.contains("later@dest.test (deferred, next attempt ")
            && list.contains(", via defer): 451 4.3.2 mailbox being moved"),
        "{list}"
    );
    assert!(!list.contains("user@dest.test (sent, via"), "{list}");
    // What routing decides, asked without sending.
    let route =
        |addr: &str| String::from_utf8_lossy(&hub.run(&["route", addr]).stdout).into_owned();
    assert_eq!(
        route("user@dest.test"),
        format!("user@dest.test: smtp via [127.0.0.9]:{port}, [127.0.0.3]:{port}\n")
    );
    assert_eq!(
        route("gone@dest.test"),
        "gone@dest.test: error: 550 5.1.1 moved away, no forwarding address\n"
    );
    assert_eq!(
        route("later@dest.test"),
        "later@dest.test: defer: 451 4.3.2 mailbox being moved\n"
    );
    assert_eq!(
        route("postmaster@hub.dest.test"),
        "postmaster@hub.dest.test: local: mailbox of postmaster@hub.dest.test\n"
    );
    let shown = String::from_utf8_lossy(&hub.run(&["check-config"]).stdout).into_owned();
    assert!(shown.contains("transport_file 3,"), "{shown}");
}

#[test]
fn a_broken_transport_table_is_refused_with_its_file_and_line() {
    let dns = TestDns::start();
    let ip = [127, 0, 0, 2];
    let port = shared_port(&[ip]);
    let dir = TempDir::new("badtransport");
    let table = dir.0.join("transport");
    std::fs::write(&table, "dest.test local\nx.test smtp:[h]:99999\n").unwrap();
    let s = Server::prepare_at(
        ip,
        port,
        &format!(
            "transport_file = {}\ndns_servers = {}\n",
            table.display(),
            dns.addr
        ),
    );
    let out = s.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("transport:2: bad host '[h]:99999'"), "{err}");
}

#[test]
fn a_dead_first_relayhost_falls_over_to_the_second() {
    let (edge_ip, smart_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[edge_ip, smart_ip]);
    let smart = Server::start_at(
        smart_ip,
        port,
        "hostname = smart.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = yes\n",
    );
    let edge = Server::start_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             relayhost = [127.0.0.9]:{port}, [127.0.0.3]:{port}\nconnect_timeout = 2s\n"
        ),
    );
    let mut c = Client::connect(edge.addr());
    c.hello();
    let (code, _) = c.mail("cron@edge.test", &["admin@far.test"], BODY);
    assert_eq!(code, 250);
    smart.wait_for("the second relayhost's copy", || smart.queued().len() == 1);
    edge.wait_for("the edge's queue emptied", || edge.queued().is_empty());
    let log = edge.log();
    assert!(
        log.contains(&format!("[127.0.0.9]:{port}: could not take the mail")),
        "{log}"
    );
    assert!(log.contains("relay=127.0.0.3[127.0.0.3]"), "{log}");
}

#[test]
fn a_sender_with_a_relay_of_its_own_goes_through_it() {
    let (edge_ip, smart_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[edge_ip, smart_ip]);
    let dir = TempDir::new("senderrelay");
    let table = dir.0.join("sender_relay");
    std::fs::write(&table, format!("boss@edge.test [127.0.0.3]:{port}\n")).unwrap();
    let smart = Server::start_at(
        smart_ip,
        port,
        "hostname = smart.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = yes\n",
    );
    let edge = Server::start_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             relayhost = [127.0.0.9]:{port}\nsender_relay_file = {}\n",
            table.display()
        ),
    );
    for from in ["boss@edge.test", "other@edge.test"] {
        let mut c = Client::connect(edge.addr());
        c.hello();
        assert_eq!(c.mail(from, &["admin@far.test"], BODY).0, 250);
    }
    smart.wait_for("the boss's mail at its relay", || smart.queued().len() == 1);
    let id = smart.queued().pop().unwrap();
    let env = smart.envelope(&id);
    assert!(env.contains("\nfrom <boss@edge.test>\n"), "{env}");
    edge.wait_for("the other sender's deferral", || {
        edge.log().contains("status=deferred") && edge.queued().len() == 1
    });
    let json = String::from_utf8_lossy(&edge.run(&["queue", "list", "--json"]).stdout).into_owned();
    assert!(
        json.contains("\"address\":\"admin@far.test\",\"state\":\"deferred\"")
            && json.contains(&format!("\"next_hop\":\"[127.0.0.9]:{port}\"")),
        "{json}"
    );
}

#[test]
fn a_next_hop_that_is_this_host_is_a_loop_not_a_delivery() {
    let dns = TestDns::start();
    let ip = [127, 0, 0, 2];
    let port = shared_port(&[ip]);
    let dir = TempDir::new("looptable");
    let table = dir.0.join("transport");
    // A table that sends loop.test back to this very host.
    std::fs::write(&table, format!("loop.test smtp:[127.0.0.2]:{port}\n")).unwrap();
    let s = Server::start_at(
        ip,
        port,
        &format!(
            "hostname = hub.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             transport_file = {}\ndns_servers = {}\n",
            table.display(),
            dns.addr
        ),
    );
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail("someone@far.test", &["x@loop.test"], BODY);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    s.wait_for("the loop bounce", || {
        s.log().contains(&format!("{id}: to=<x@loop.test>")) && s.log().contains("status=bounced")
    });
    assert!(
        s.log()
            .contains("554 5.4.6 mail for loop.test loops back to myself"),
        "{}",
        s.log()
    );
}

/// Two hubs whose tables send loop.test to each other (a → b → a): the
/// hop count (`max_hops`, RFC 5321 §6.3) ends it with a bounce to the
/// sender, not a message circling for ever.
#[test]
fn two_hubs_whose_tables_point_at_each_other_end_the_loop_with_a_bounce() {
    let (a_ip, b_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[a_ip, b_ip]);
    let dir = TempDir::new("abaloop");
    let hub = |ip: [u8; 4], name: &str, other: &str, home: &str| {
        let table = dir.0.join(format!("transport-{name}"));
        std::fs::write(
            &table,
            format!(
                "loop.test smtp:[{other}]:{port}
{home}"
            ),
        )
        .unwrap();
        Server::start_at(
            ip,
            port,
            &format!(
                "hostname = {name}
local_domains = {name}
relay_networks = 127.0.0.0/8
                 defer_delivery = no
max_hops = 6
transport_file = {}
",
                table.display()
            ),
        )
    };
    let a = hub(a_ip, "a.test", "127.0.0.3", "");
    let b = hub(
        b_ip,
        "b.test",
        "127.0.0.2",
        &format!("a.test smtp:[127.0.0.2]:{port}\n"),
    );
    let mut c = Client::connect(a.addr());
    c.hello();
    let (code, text) = c.mail("alice@a.test", &["x@loop.test"], BODY);
    assert_eq!(code, 250, "{text}");
    a.wait_for("the bounce in the sender's mailbox", || {
        a.maildir("alice").len() == 1
    });
    let bounce = std::fs::read_to_string(&a.maildir("alice")[0]).unwrap();
    assert!(bounce.contains("too many hops"), "{bounce}");
    assert!(bounce.contains("x@loop.test"), "{bounce}");
    a.wait_for("both queues empty", || {
        a.queued().is_empty() && b.queued().is_empty()
    });
}

#[test]
fn outgoing_connections_come_from_the_smtp_bind_address() {
    let (edge_ip, smart_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[edge_ip, smart_ip]);
    // The smarthost relays only for 127.0.0.7: a connection from the
    // kernel's choice (127.0.0.1) would be refused.
    let smart = Server::start_at(
        smart_ip,
        port,
        "hostname = smart.test\nrelay_networks = 127.0.0.7/32\ndefer_delivery = yes\n",
    );
    let edge = Server::start_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             relayhost = [127.0.0.3]:{port}\nsmtp_bind_address = 127.0.0.7\n"
        ),
    );
    let mut c = Client::connect(edge.addr());
    c.hello();
    assert_eq!(c.mail("cron@edge.test", &["admin@far.test"], BODY).0, 250);
    smart.wait_for("the relayed copy", || smart.queued().len() == 1);
    let id = smart.queued().pop().unwrap();
    let msg = String::from_utf8(smart.message(&id)).unwrap();
    assert!(msg.contains("[127.0.0.7])\r\n\tby smart.test"), "{msg}");
    // An address this host does not have is refused before any delivery.
    let other = Server::prepare_at(
        edge_ip,
        shared_port(&[edge_ip]),
        "smtp_bind_address = 192.0.2.1\nsmtp_bind_address6 = ::1\n",
    );
    let out = other.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smtp_bind_address: cannot send from 192.0.2.1:"),
        "{err}"
    );
    assert!(!err.contains("smtp_bind_address6"), "{err}");
    let bad = Server::prepare_at(
        edge_ip,
        shared_port(&[edge_ip]),
        "smtp_bind_address = ::1\n",
    );
    let err = String::from_utf8_lossy(&bad.run(&["check-config"]).stderr).into_owned();
    assert!(
        err.contains("bad value for smtp_bind_address: '::1' (expected an IPv4 address)"),
        "{err}"
    );
}

#[test]
fn a_broken_transport_table_at_sighup_leaves_the_old_one_in_force() {
    let dir = TempDir::new("reloadtable");
    let table = dir.0.join("transport");
    std::fs::write(&table, "dest.test error:5.7.1 the first table\n").unwrap();
    let ip = [127, 0, 0, 2];
    let s = Server::start_at(
        ip,
        shared_port(&[ip]),
        &format!(
            "hostname = hub.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             transport_file = {}\n",
            table.display()
        ),
    );
    let send = |n: usize| {
        let mut c = Client::connect(s.addr());
        c.hello();
        let (code, text) = c.mail("someone@far.test", &[&format!("x{n}@dest.test")], BODY);
        assert_eq!(code, 250, "{text}");
        let id = common::queue_id(&text);
        s.wait_for("the decision", || {
            s.log().contains(&format!("{id}: to=<x{n}@dest.test>"))
        });
        let log = s.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{id}: to=<x{n}@dest.test>")))
            .unwrap_or_default();
        line.to_string()
    };
    assert!(send(1).contains("(550 5.7.1 the first table)"));
    std::fs::write(
        &table,
        "dest.test error:5.7.1 the second table\nx.test smtp:[h]:99999\n",
    )
    .unwrap();
    s.signal("HUP");
    s.wait_for("the refusal", || {
        s.log().contains("reload refused, keeping the old settings")
    });
    assert!(
        s.log().contains("transport:2: bad host '[h]:99999'"),
        "{}",
        s.log()
    );
    assert!(
        send(2).contains("(550 5.7.1 the first table)"),
        "{}",
        s.log()
    );
    std::fs::write(&table, "dest.test error:5.7.1 the second table\n").unwrap();
    s.signal("HUP");
    s.wait_for("the reload", || {
        s.log().contains("reloaded the configuration and aliases")
    });
    assert!(
        send(3).contains("(550 5.7.1 the second table)"),
        "{}",
        s.log()
    );
}
