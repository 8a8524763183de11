//! DANE (RFC 7672) towards MX hosts, against the tests' DNS server acting
//! as a validating resolver (the AD bit) and satchels with certificates
//! from a test CA: a matching DANE-EE record, a DANE-TA record for the CA,
//! a record that matches nothing, a host that drops STARTTLS, records
//! that are not usable, and MX records DNSSEC does not vouch for.
#![cfg(feature = "tls")]

mod common;

use common::dns::TestDns;
use common::pki::{make_ca, signed_for, tlsa_digest};
use common::{shared_port, Server};

/// The MX hosts' names: one certificate carries them all.
const NAMES: [&str; 6] = [
    "mx1.dane.test",
    "mx2.dane.test",
    "mx3.dane.test",
    "mx5.dane.test",
    "mx6.dane.test",
    "mx7.dane.test",
];

/// A receiving satchel for every test domain, with `tls_cert` (its chain)
/// when given.
fn receiver(ip: [u8; 4], port: u16, tls: Option<(String, String)>) -> Server {
    let mut s = Server::prepare_at(
        ip,
        port,
        "local_domains = match.test, ta.test, wrong.test, downgrade.test, insecure.test, \
         unusable.test, plain.test\nlocal_users = a\ndefer_delivery = yes\n",
    );
    if let Some((cert, key)) = tls {
        s.add_conf(&format!("tls_cert = {cert}\ntls_key = {key}\n"));
    }
    s.spawn();
    s
}

#[test]
fn dane_verifies_what_tlsa_records_say_and_never_falls_back_to_less() {
    let dns = TestDns::start();
    dns.validating(true);
    let (edge_ip, tls_ip, plain_ip) = ([127, 0, 0, 26], [127, 0, 0, 27], [127, 0, 0, 28]);
    let port = shared_port(&[edge_ip, tls_ip, plain_ip]);
    let ca_dir = common::TempDir::new("dane-ca");
    let ca = make_ca(&ca_dir.0);
    let pki = common::TempDir::new("dane-pki");
    let (cert, key) = signed_for(&pki.0, &ca_dir.0, &NAMES);
    // The chain the server sends: its certificate, then the CA's.
    let chain = pki.0.join("chain.pem");
    let both = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&ca).unwrap();
    std::fs::write(&chain, both).unwrap();
    let tls_mx = receiver(tls_ip, port, Some((chain.display().to_string(), key)));
    let plain_mx = receiver(plain_ip, port, None);
    for (domain, mx, ip) in [
        ("match.test", "mx1.dane.test", tls_ip),
        ("wrong.test", "mx2.dane.test", tls_ip),
        ("ta.test", "mx3.dane.test", tls_ip),
        ("downgrade.test", "mx4.dane.test", plain_ip),
        ("insecure.test", "mx5.dane.test", tls_ip),
        ("unusable.test", "mx6.dane.test", tls_ip),
        ("plain.test", "mx7.dane.test", plain_ip),
    ] {
        dns.mx(domain, 10, mx);
        dns.a(mx, ip.into());
    }
    dns.insecure("insecure.test");
    let spki = tlsa_digest(&cert, true);
    dns.tlsa("_25._tcp.mx1.dane.test", 3, 1, 1, &spki);
    dns.tlsa("_25._tcp.mx2.dane.test", 3, 1, 1, &[0x5a; 32]);
    dns.tlsa("_25._tcp.mx3.dane.test", 2, 0, 1, &tlsa_digest(&ca, false));
    dns.tlsa("_25._tcp.mx4.dane.test", 3, 1, 1, &spki);
    dns.tlsa("_25._tcp.mx5.dane.test", 3, 1, 1, &spki);
    // Usage 1 (PKIX-EE) and an unknown usage 4: no usable record.
    dns.tlsa("_25._tcp.mx6.dane.test", 1, 1, 1, &spki);
    dns.tlsa("_25._tcp.mx6.dane.test", 4, 1, 1, &spki);
    let policy = common::TempDir::new("dane-policy");
    let file = policy.0.join("tls_policy");
    std::fs::write(&file, "insecure.test dane-only\n").unwrap();
    let edge = Server::start_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             dns_servers = {}\nrelay_port = {port}\nsmtp_tls_security_level = dane\n\
             tls_policy_file = {}\n",
            dns.addr,
            file.display()
        ),
    );
    let rcpts: Vec<String> = [
        "match.test",
        "wrong.test",
        "ta.test",
        "downgrade.test",
        "insecure.test",
        "unusable.test",
        "plain.test",
    ]
    .iter()
    .map(|d| format!("a@{d}"))
    .collect();
    edge.send_each("x@edge.test", &rcpts);
    edge.wait_for("three over TLS", || tls_mx.queued().len() == 3);
    edge.wait_for("one in plaintext", || plain_mx.queued().len() == 1);
    edge.wait_for("three deferrals", || {
        edge.log().matches("status=deferred").count() >= 3
    });
    let log = edge.log();
    let line = |d: &str| edge.log_for(&format!("a@{d}"));
    for d in ["match.test", "ta.test", "unusable.test", "plain.test"] {
        assert!(line(d).contains("status=sent"), "{d}: {log}");
    }
    for d in ["wrong.test", "downgrade.test", "insecure.test"] {
        assert!(line(d).contains("status=deferred"), "{d}: {log}");
    }
    assert!(
        log.contains("mx1.dane.test[127.0.0.27]: TLS established: "),
        "{log}"
    );
    for host in ["mx1.dane.test", "mx3.dane.test"] {
        let verified = format!("{host}[127.0.0.27]: TLS established: ");
        assert!(
            log.lines()
                .any(|l| l.contains(&verified) && l.ends_with("; Verified TLS (DANE)")),
            "{host}: {log}"
        );
    }
    assert!(
        line("wrong.test").contains("no TLSA record matches"),
        "{log}"
    );
    assert!(
        line("downgrade.test").contains("STARTTLS is required but not offered"),
        "{log}"
    );
    assert!(
        line("insecure.test")
            .contains("the MX records are not DNSSEC-validated (TLS policy dane-only)"),
        "{log}"
    );
    assert!(log.contains("TLSA records, none usable"), "{log}");
    // What came over TLS says so in its Received: line.
    let copies: Vec<String> = tls_mx
        .queued()
        .iter()
        .map(|id| String::from_utf8_lossy(&tls_mx.message(id)).into_owned())
        .collect();
    assert!(
        copies.iter().all(|m| m.contains("with ESMTPS")),
        "{copies:?}"
    );
    let plain: Vec<String> = plain_mx
        .queued()
        .iter()
        .map(|id| String::from_utf8_lossy(&plain_mx.message(id)).into_owned())
        .collect();
    assert!(plain[0].contains("Subject: to a@plain.test"), "{plain:?}");
}
