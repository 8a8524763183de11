//! DKIM signing (RFC 6376): which mail is signed, that a retry sends the
//! signature made before the first try, and what a bad key or a message
//! that cannot be signed leads to. The signatures themselves are checked
//! by third-party verifiers (dkimpy, OpenDKIM) in scripts/interop.
#![cfg(feature = "tls")]

mod common;

use common::{shared_port, Client, Server, TempDir};
use std::path::Path;

/// An Ed25519 key for example.test (selector `ed`) and the keys file.
fn keys(dir: &Path) -> String {
    let key = dir.join("ed.key");
    let out = std::process::Command::new(common::BIN)
        .args(["dkim-keygen", "example.test", "ed", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ed._domainkey.example.test. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{stdout}"
    );
    let table = dir.join("dkim_keys");
    std::fs::write(
        &table,
        format!("# signing keys\nexample.test ed {}\n", key.display()),
    )
    .unwrap();
    table.display().to_string()
}

/// mail.example.test on `ip`, signing with `table`'s keys, relaying all
/// to 127.0.0.3 on `port`.
fn signing_edge(ip: [u8; 4], port: u16, table: &str) -> Server {
    Server::start_at(
        ip,
        port,
        &format!(
            "hostname = mail.example.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             relayhost = [127.0.0.3]:{port}\ndkim_keys_file = {table}\n"
        ),
    )
}

const SIGNED: &[u8] =
    b"From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: signed\r\n\r\nbody\r\n";

/// The `DKIM-Signature:` field of a message (unfolded), or "".
fn signature(msg: &str) -> String {
    let Some(start) = msg.find("DKIM-Signature: ") else {
        return String::new();
    };
    let mut out = String::new();
    for (i, line) in msg[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with('\t') {
            break;
        }
        out.push_str(line.trim_start());
    }
    out
}

#[test]
fn trusted_mail_is_signed_once_and_a_retry_sends_the_same_signature() {
    let (edge_ip, far_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[edge_ip, far_ip]);
    let dir = TempDir::new("dkimkeys");
    let table = keys(&dir.0);
    let edge = signing_edge(edge_ip, port, &table);
    let mut c = Client::connect(edge.addr());
    c.hello();
    let (code, text) = c.mail("alice@example.test", &["bob@far.test"], SIGNED);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    // The receiver is down: deferred, with the signature kept.
    edge.wait_for("the deferral", || {
        edge.log().contains(&format!("{id}: to=<bob@far.test>")) && edge.queued() == [id.clone()]
    });
    let env = edge.envelope(&id);
    let kept = env
        .lines()
        .find_map(|l| l.strip_prefix("dkim "))
        .unwrap_or_else(|| panic!("no signature kept: {env}"))
        .replace("\\x0D\\x0A\\x09", "");
    assert!(
        kept.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{kept}"
    );
    let far = Server::start_at(
        far_ip,
        port,
        "hostname = far.test\nlocal_domains = far.test\nlocal_users = bob\ndefer_delivery = yes\n",
    );
    assert!(edge.run(&["queue", "flush"]).status.success());
    far.wait_for("the retry's copy", || far.queued().len() == 1);
    let got = String::from_utf8(far.message(&far.queued()[0])).unwrap();
    let sent = signature(&got);
    assert_eq!(format!("{sent}\\x0D\\x0A"), kept, "{got}");
    assert!(sent.contains(" d=example.test; s=ed;"), "{sent}");
    assert_eq!(got.matches("DKIM-Signature:").count(), 1, "{got}");
}

#[test]
fn relayed_mail_from_others_and_other_domains_are_not_signed() {
    let (hub_ip, inner_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[hub_ip, inner_ip]);
    let dir = TempDir::new("dkimhub");
    let table = keys(&dir.0);
    let transport = dir.0.join("transport");
    std::fs::write(&transport, format!("dest.test smtp:[127.0.0.3]:{port}\n")).unwrap();
    let inner = Server::start_at(
        inner_ip,
        port,
        "hostname = inner.test\nlocal_domains = dest.test\nlocal_users = user\nrelay_networks = 127.0.0.99/32\n",
    );
    let hub = Server::start_at(
        hub_ip,
        port,
        &format!(
            "hostname = hub.example.test\nrelay_domains = dest.test\nrelay_networks = 127.0.0.99/32\n\
             defer_delivery = no\ntransport_file = {}\ndkim_keys_file = {table}\n",
            transport.display()
        ),
    );
    // From the Internet (127.0.0.1 is not in relay_networks), claiming the
    // signed domain: relayed as it came.
    let mut c = Client::connect(hub.addr());
    c.hello();
    let (code, text) = c.mail("alice@example.test", &["user@dest.test"], SIGNED);
    assert_eq!(code, 250, "{text}");
    inner.wait_for("the relayed copy", || inner.queued().len() == 1);
    let got = String::from_utf8(inner.message(&inner.queued()[0])).unwrap();
    assert!(!got.contains("DKIM-Signature"), "{got}");
    assert!(hub.log().contains("status=sent"), "{}", hub.log());
}

#[test]
fn a_domain_without_a_key_goes_unsigned_and_an_unsignable_message_waits() {
    let (edge_ip, far_ip) = ([127, 0, 0, 2], [127, 0, 0, 3]);
    let port = shared_port(&[edge_ip, far_ip]);
    let dir = TempDir::new("dkimfail");
    let table = keys(&dir.0);
    let far = Server::start_at(
        far_ip,
        port,
        "hostname = far.test\nlocal_domains = far.test\nlocal_users = bob\n",
    );
    let edge = signing_edge(edge_ip, port, &table);
    let mut c = Client::connect(edge.addr());
    c.hello();
    let other = b"From: someone@other.test\r\nSubject: no key\r\n\r\nx\r\n";
    assert_eq!(
        c.mail("someone@other.test", &["bob@far.test"], other).0,
        250
    );
    far.wait_for("the unsigned copy", || far.queued().len() == 1);
    let got = String::from_utf8(far.message(&far.queued()[0])).unwrap();
    assert!(!got.contains("DKIM-Signature"), "{got}");
    // A header section too big to sign: kept back, never sent unsigned.
    let mut big = b"From: alice@example.test\r\n".to_vec();
    for i in 0..3000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(90)).as_bytes());
    }
    big.extend_from_slice(b"\r\nbody\r\n");
    let (code, text) = c.mail("alice@example.test", &["bob@far.test"], &big);
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    edge.wait_for("the deferral", || {
        edge.log().contains(&format!("{id}: to=<bob@far.test>"))
    });
    let log = edge.log();
    assert!(
        log.contains(&format!(
            "warning: {id}: DKIM signing failed: reading the message: header section over 256 KiB; remote delivery deferred"
        )),
        "{log}"
    );
    assert!(
        log.contains("status=deferred (451 4.7.0 DKIM signing failed"),
        "{log}"
    );
    edge.wait_for("the message back in the queue", || {
        edge.queued() == [id.clone()]
    });
    assert_eq!(far.queued().len(), 1, "nothing more arrived");
}

#[test]
fn bad_keys_are_named_with_file_and_line_at_start_and_at_sighup() {
    let dir = TempDir::new("dkimbad");
    let table = keys(&dir.0);
    let good = std::fs::read_to_string(&table).unwrap();
    let weak = dir.0.join("weak.pem");
    let pkcs1 = dir.0.join("pkcs1.pem");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        weak.to_str().unwrap(),
    ]);
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        pkcs1.to_str().unwrap(),
        "2048",
    ]);
    let s = Server::start(&format!("dkim_keys_file = {table}\n"));
    let check = |text: String| {
        std::fs::write(&table, text).unwrap();
        let out = s.run(&["check-config"]);
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = check(format!(
        "{good}example.test rsa {}/none.pem\n",
        dir.0.display()
    ));
    assert!(
        missing.contains("dkim_keys:3: ") && missing.contains("none.pem: cannot read:"),
        "{missing}"
    );
    let e = check(format!("{good}example.test rsa {}\n", weak.display()));
    assert!(
        e.contains("dkim_keys:3: ") && e.contains("RSA key too weak (under 2048 bits)"),
        "{e}"
    );
    let e = check(format!("{good}example.test rsa {}\n", pkcs1.display()));
    assert!(e.contains("a PKCS#1 RSA key; convert it to PKCS#8"), "{e}");
    let e = check(format!("{good}example.test rsa {}\n", table));
    assert!(e.contains("not a PKCS#8 PEM key"), "{e}");
    // The running server keeps its keys when a reload finds a bad one.
    s.signal("HUP");
    s.wait_for("the refusal", || {
        s.log().contains("reload refused, keeping the old settings")
    });
    assert!(s.log().contains("dkim_keys:3: "), "{}", s.log());
    std::fs::write(&table, &good).unwrap();
    let shown = String::from_utf8_lossy(&s.run(&["check-config"]).stdout).into_owned();
    assert!(shown.contains("dkim_keys_file 1"), "{shown}");
}
