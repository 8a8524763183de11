//! STARTTLS (RFC 3207) as server and client, with a self-signed
//! certificate made by openssl for each test.
#![cfg(feature = "tls")]

mod common;

use common::fake::{FakeSmtp, Fault};
use common::pki::{make_ca, signed_cert};
use common::{free_port, shared_port, Client, Server};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// A self-signed certificate and key in `dir` for `host`.
fn make_cert(dir: &Path, host: &str) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

fn tls_server(extra: &str) -> Server {
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), "");
    let (cert, key) = make_cert(&s.dir.0, "mx.satchel.test");
    let text = std::fs::read_to_string(&s.conf).unwrap();
    std::fs::write(
        &s.conf,
        format!("{text}tls_cert = {cert}\ntls_key = {key}\n{extra}"),
    )
    .unwrap();
    s.spawn();
    s
}

fn python(script: &str, port: u16) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn starttls_with_python_smtplib_gives_an_esmtps_received_line() {
    let s = tls_server("");
    let out = python(
        "import smtplib,ssl,sys\n\
         s=smtplib.SMTP('127.0.0.1',int(sys.argv[1]))\n\
         s.ehlo(); print('offered', s.has_extn('starttls'))\n\
         ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
         s.starttls(context=ctx); s.ehlo(); print('after', s.has_extn('starttls'))\n\
         s.sendmail('a@example.org',['alice@satchel.test'],b'Subject: tls\\r\\n\\r\\nsecret\\r\\n'); s.quit()",
        s.port,
    );
    assert_eq!(out, "offered True\nafter False\n");
    let id = s.queued().pop().expect("queued");
    let msg = String::from_utf8(s.message(&id)).unwrap();
    assert!(msg.contains("(satchel) with ESMTPS id"), "{msg}");
    assert!(s.log().contains("TLS established"));
}

/// CVE-2011-0411: commands pipelined after STARTTLS, in plaintext, must
/// not be executed inside the TLS session.
#[test]
fn a_tls_handshake_dripped_a_byte_at_a_time_is_cut_off_at_the_command_timeout() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::Duration;
    let s = tls_server("command_timeout = 2s\n");
    let c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c.try_clone().unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    w.write_all(b"EHLO drip\r\n").unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    w.write_all(b"STARTTLS\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    // A TLS record header announcing a 512-byte handshake message, then
    // its body a byte every half second, each well within the 2 s time-out
    // of a single read: without a deadline for the whole handshake this
    // would take four minutes.
    w.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut closed_after = None;
    for sent in 0..30 {
        let mut b = [0u8; 64];
        match r.get_mut().read(&mut b) {
            Ok(0) => {
                closed_after = Some(sent);
                break;
            }
            Ok(_) => {} // an alert, perhaps; the close follows
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed_after = Some(sent);
                break;
            }
        }
        if w.write_all(&[0x01]).is_err() {
            closed_after = Some(sent);
            break;
        }
    }
    assert!(
        closed_after.is_some(),
        "the server was still waiting after 15 s of dripping"
    );
    s.wait_for("the handshake failure logged", || {
        s.log().contains("TLS handshake failed")
    });
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let s = tls_server("");
    let out = python(
        "import socket,ssl,sys\n\
         c=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\n\
         f=c.makefile('rb')\n\
         f.readline()\n\
         c.sendall(b'EHLO x\\r\\n')\n\
         while True:\n    l=f.readline()\n    if l[3:4]==b' ': break\n\
         c.sendall(b'STARTTLS\\r\\nNOOP injected\\r\\n')\n\
         print(f.readline().decode().strip())\n\
         ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
         t=ctx.wrap_socket(c); tf=t.makefile('rb')\n\
         t.sendall(b'EHLO y\\r\\n')\n\
         print(tf.readline().decode().strip())",
        s.port,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "220 2.0.0 Ready to start TLS");
    assert_eq!(
        lines[1], "250-mx.satchel.test",
        "the first reply inside TLS answers EHLO, not the injected NOOP"
    );
    assert!(s.log().contains("pipelined after STARTTLS discarded"));
}

#[test]
fn satchel_relays_to_satchel_over_starttls() {
    let port = shared_port(&[[127, 0, 0, 11], [127, 0, 0, 12]]);
    let mut b = Server::prepare_at(
        [127, 0, 0, 12],
        port,
        "hostname = mx.dest.test\nlocal_domains = dest.test\nlocal_users = user\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n",
    );
    let (cert, key) = make_cert(&b.dir.0, "mx.dest.test");
    let text = std::fs::read_to_string(&b.conf).unwrap();
    std::fs::write(
        &b.conf,
        format!("{text}tls_cert = {cert}\ntls_key = {key}\n"),
    )
    .unwrap();
    b.spawn();
    let a = Server::start_at(
        [127, 0, 0, 11],
        port,
        &format!("hostname = a.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\nrelayhost = [127.0.0.12]:{port}\nrelayhost_tls = required\n"),
    );
    let mut c = Client::connect(a.addr());
    c.hello();
    assert_eq!(
        c.mail(
            "x@a.test",
            &["user@dest.test"],
            b"Subject: over tls\r\n\r\nhi\r\n"
        )
        .0,
        250
    );
    b.wait_for("delivery on B", || b.maildir("user").len() == 1);
    let m = std::fs::read_to_string(&b.maildir("user")[0]).unwrap();
    assert!(
        m.contains("by mx.dest.test (satchel) with ESMTPS id"),
        "{m}"
    );
    assert!(a.log().contains("TLS established"), "{}", a.log());
}

/// A relayhost that offers STARTTLS and fails the handshake, and a server
/// (with `extra` settings) that has queued one message for it.
fn towards_a_broken_tls_relayhost(extra: &str) -> (FakeSmtp, Server) {
    let port = free_port();
    let broken = FakeSmtp::start_with(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
        Box::new(|_| Fault::BrokenTls),
    );
    let s = Server::start(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{port}\n{extra}"
    ));
    let mut c = Client::connect(s.addr());
    c.hello();
    let body = b"Subject: opportunistic\r\n\r\nx\r\n";
    assert_eq!(
        c.mail("alice@satchel.test", &["x@remote.test"], body).0,
        250
    );
    (broken, s)
}

#[test]
fn a_failed_handshake_with_opportunistic_tls_falls_back_to_plaintext() {
    let (broken, s) = towards_a_broken_tls_relayhost("");
    s.wait_for("delivery in plaintext", || broken.received().len() == 1);
    assert!(s
        .log()
        .contains("TLS handshake failed; trying again without TLS"));
    assert_eq!(
        broken.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );

    // Where TLS is required, the mail waits instead.
    let (broken, s) = towards_a_broken_tls_relayhost("relayhost_tls = required\n");
    s.wait_for("the deferral", || s.log().contains("status=deferred"));
    assert!(
        broken.received().is_empty(),
        "nothing went out in plaintext"
    );
}

#[test]
fn required_tls_towards_a_relayhost_without_starttls_defers() {
    let port = free_port();
    let plain = FakeSmtp::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Box::new(|_, _| "250 ok".into()),
    );
    let s = Server::start(&format!(
        "defer_delivery = no\nrelayhost = [127.0.0.1]:{port}\nrelayhost_tls = required\n"
    ));
    let mut c = Client::connect(s.addr());
    c.hello();
    assert_eq!(
        c.mail(
            "alice@satchel.test",
            &["x@remote.test"],
            b"Subject: must be private\r\n\r\nx\r\n"
        )
        .0,
        250
    );
    s.wait_for("the deferral", || {
        s.log().contains("STARTTLS is required but not offered")
            && s.log().contains("status=deferred")
    });
    assert!(plain.received().is_empty(), "nothing went out in plaintext");
}

/// `openssl passwd -6` for the tests' credentials file.
fn sha512_crypt(password: &str) -> String {
    let out = Command::new("openssl")
        .args(["passwd", "-6", password])
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn auth_on_the_submission_port_lets_a_user_relay() {
    // 127.0.0.1 may not relay: only the login lets carol send out.
    let (s, sub_port) = submission_server("relay_networks = 127.0.0.99/32\n");
    let out = python(
        &format!(
            "import smtplib,ssl,sys\n\
             ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
             s=smtplib.SMTP('127.0.0.1',{sub_port}); s.ehlo()\n\
             try:\n    s.sendmail('carol@satchel.test',['x@remote.test'],b'Subject: no\\r\\n\\r\\nx\\r\\n')\n\
             except smtplib.SMTPSenderRefused as e: print('refused', e.smtp_code)\n\
             print('auth before tls', s.has_extn('auth'))\n\
             s.starttls(context=ctx); s.ehlo(); print('auth in tls', s.has_extn('auth'))\n\
             try:\n    s.login('carol','wrong')\n\
             except smtplib.SMTPAuthenticationError as e: print('bad', e.smtp_code)\n\
             s.login('carol','s3cret'); print('good')\n\
             s.sendmail('carol@satchel.test',['x@remote.test'],b'Subject: yes\\r\\n\\r\\nx\\r\\n'); s.quit()"
        ),
        s.port,
    );
    assert_eq!(
        out,
        "refused 530\nauth before tls False\nauth in tls True\nbad 535\ngood\n"
    );
    let id = s.queued().pop().expect("queued");
    assert!(String::from_utf8(s.message(&id))
        .unwrap()
        .contains("with ESMTPSA id"));
    assert!(s.log().contains("AUTH failed (1 so far)"));
    // One line per verdict, as Postfix logs it; never the password.
    assert!(
        s.log()
            .contains("AUTH failed (1 so far): sasl_method=PLAIN, sasl_username=carol"),
        "{}",
        s.log()
    );
    assert!(s.log().contains("sasl_method=PLAIN, sasl_username=carol\n"));
    assert!(!s.log().contains("s3cret") && !s.log().contains("wrong"));
}

/// A submission server offering AUTH (carol, s3cret) only inside TLS.
fn submission_server(extra: &str) -> (Server, u16) {
    let sub_port = free_port();
    let mut s = Server::prepare_at([127, 0, 0, 1], free_port(), extra);
    let (cert, key) = make_cert(&s.dir.0, "mx.satchel.test");
    let creds = s.dir.0.join("users");
    std::fs::write(&creds, format!("carol:{}\n", sha512_crypt("s3cret"))).unwrap();
    let text = std::fs::read_to_string(&s.conf).unwrap();
    std::fs::write(
        &s.conf,
        format!(
            "{text}tls_cert = {cert}\ntls_key = {key}\nauth_users_file = {}\nsubmission_listen = 127.0.0.1:{sub_port}\n",
            creds.display()
        ),
    )
    .unwrap();
    s.spawn();
    (s, sub_port)
}

#[test]
fn auth_before_starttls_on_the_submission_port_says_to_start_tls_first() {
    let (_s, sub_port) = submission_server("");
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], sub_port)));
    c.reply();
    c.cmd("EHLO client.test");
    assert_eq!(
        c.cmd("AUTH PLAIN AGNhcm9sAHMzY3JldA=="),
        (530, "5.7.0 Must issue a STARTTLS command first".into())
    );
    assert_eq!(c.cmd("MAIL FROM:<carol@satchel.test>").0, 530);
}

#[test]
fn an_implicit_tls_client_on_a_starttls_port_is_named_in_the_log() {
    let s = tls_server("");
    // What a client configured for port 465 does: TLS from the first byte.
    let out = python(
        "import socket,ssl,sys\n\
         ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
         raw=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=20)\n\
         try:\n    ctx.wrap_socket(raw); print('handshake completed')\n\
         except (ssl.SSLError, OSError) as e: print('no handshake')",
        s.port,
    );
    assert_eq!(out, "no handshake\n");
    s.wait_for("the log line", || {
        s.log()
            .contains("sent a TLS handshake instead of SMTP: it expects implicit TLS")
    });
}

/// `check-config` for a server with these TLS files.
fn check_tls_files(cert: &str, key: &str) -> (i32, String) {
    let s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!("tls_cert = {cert}\ntls_key = {key}\n"),
    );
    let out = s.run(&["check-config"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_finds_tls_files_that_serve_would_die_on() {
    let dir = common::TempDir::new("tlsfiles");
    let (cert, key) = make_cert(&dir.0, "mx.satchel.test");
    let other = dir.0.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, other_key) = make_cert(&other, "elsewhere.test");
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.0.join("missing.pem").display().to_string();
    let (code, err) = check_tls_files(&cert, &key);
    assert_eq!((code, err.as_str()), (0, ""), "a good pair");
    let (code, err) = check_tls_files(&missing, &key);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("satchel: tls_cert: ") && err.contains("cannot read"),
        "{err}"
    );
    let (code, err) = check_tls_files(&cert, &missing);
    assert!(code == 2 && err.starts_with("satchel: tls_key: "), "{err}");
    let (code, err) = check_tls_files(&garbage.display().to_string(), &key);
    assert!(code == 2 && err.contains("no certificate"), "{err}");
    let (code, err) = check_tls_files(&cert, &other_key);
    assert_eq!(code, 2, "a key that is not the certificate's: {err}");
    assert!(err.starts_with("satchel: tls_cert: "), "{err}");
}

#[test]
fn serve_with_a_broken_certificate_names_the_setting_and_creates_nothing() {
    let dir = common::TempDir::new("tlsbroken");
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (_, key) = make_cert(&dir.0, "mx.satchel.test");
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        free_port(),
        &format!("tls_cert = {}\ntls_key = {key}\n", garbage.display()),
    );
    let log = std::fs::File::create(s.dir.0.join("log")).unwrap();
    let st = Command::new(common::BIN)
        .args(["serve", "-c"])
        .arg(&s.conf)
        .stderr(log)
        .status()
        .unwrap();
    s.child = None;
    assert_eq!(st.code(), Some(2), "{}", s.log());
    assert!(s.log().contains("fatal: tls_cert: "), "{}", s.log());
    assert!(!s.spool().exists(), "no spool made before the check");
}

#[test]
fn satchel_authenticates_to_its_smarthost() {
    let port = shared_port(&[[127, 0, 0, 13], [127, 0, 0, 14]]);
    let mut smart = Server::prepare_at(
        [127, 0, 0, 14],
        port,
        "hostname = smart.test\nrelay_networks = 127.0.0.99/32\ndefer_delivery = yes\n",
    );
    let (cert, key) = make_cert(&smart.dir.0, "smart.test");
    let creds = smart.dir.0.join("users");
    std::fs::write(&creds, format!("edge:{}\n", sha512_crypt("pa55"))).unwrap();
    let text = std::fs::read_to_string(&smart.conf).unwrap();
    std::fs::write(
        &smart.conf,
        format!(
            "{text}tls_cert = {cert}\ntls_key = {key}\nauth_users_file = {}\n",
            creds.display()
        ),
    )
    .unwrap();
    smart.spawn();
    let mut edge = Server::prepare_at(
        [127, 0, 0, 13],
        port,
        &format!("hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\nrelayhost = [127.0.0.14]:{port}\nrelayhost_tls = required\n"),
    );
    let secret = edge.dir.0.join("relay-auth");
    std::fs::write(&secret, "edge:pa55\n").unwrap();
    let text = std::fs::read_to_string(&edge.conf).unwrap();
    std::fs::write(
        &edge.conf,
        format!("{text}relayhost_auth_file = {}\n", secret.display()),
    )
    .unwrap();
    edge.spawn();
    let mut c = Client::connect(edge.addr());
    c.hello();
    assert_eq!(
        c.mail(
            "cron@edge.test",
            &["admin@far.test"],
            b"Subject: via smarthost\r\n\r\nx\r\n"
        )
        .0,
        250
    );
    smart.wait_for("the smarthost's queue", || smart.queued().len() == 1);
    let id = smart.queued().pop().unwrap();
    assert!(String::from_utf8(smart.message(&id))
        .unwrap()
        .contains("with ESMTPSA id"));
    assert!(
        edge.log().contains("is readable by others"),
        "a world-readable secret is warned about"
    );
}

#[test]
fn relayhost_tls_verify_checks_the_certificate_and_the_name() {
    let dns = common::dns::TestDns::start();
    let port = shared_port(&[[127, 0, 0, 15], [127, 0, 0, 16], [127, 0, 0, 17]]);
    dns.a("smart.test", [127, 0, 0, 16].into());
    dns.a("impostor.test", [127, 0, 0, 17].into());
    let ca_dir = common::TempDir::new("ca");
    let ca = make_ca(&ca_dir.0);
    let mut servers = Vec::new();
    // Both certificates come from the trusted CA; only the names differ.
    for (ip, cert_name) in [
        ([127, 0, 0, 16], "smart.test"),
        ([127, 0, 0, 17], "someone-else.test"),
    ] {
        let mut s = Server::prepare_at(
            ip,
            port,
            "relay_networks = 127.0.0.0/8\ndefer_delivery = yes\n",
        );
        let (cert, key) = signed_cert(&s.dir.0, &ca_dir.0, cert_name);
        let text = std::fs::read_to_string(&s.conf).unwrap();
        std::fs::write(
            &s.conf,
            format!("{text}tls_cert = {cert}\ntls_key = {key}\n"),
        )
        .unwrap();
        s.spawn();
        servers.push(s);
    }
    let edge = |host: &str| {
        Server::start_at(
            [127, 0, 0, 15],
            shared_port(&[[127, 0, 0, 15]]),
            &format!(
                "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\ndns_servers = {}\n\
                 relayhost = [{host}]:{port}\nrelayhost_tls = verify\ntls_ca_file = {ca}\n",
                dns.addr
            ),
        )
    };
    // The right name, signed by the trusted CA: delivered.
    let a = edge("smart.test");
    let mut c = Client::connect(a.addr());
    c.hello();
    assert_eq!(
        c.mail(
            "x@edge.test",
            &["y@far.test"],
            b"Subject: verified\r\n\r\nx\r\n"
        )
        .0,
        250
    );
    servers[0].wait_for("delivery to the verified smarthost", || {
        servers[0].queued().len() == 1
    });
    drop(a);
    // A trusted certificate for another name: never sent, deferred.
    let b = edge("impostor.test");
    let mut c = Client::connect(b.addr());
    c.hello();
    assert_eq!(
        c.mail(
            "x@edge.test",
            &["y@far.test"],
            b"Subject: not to an impostor\r\n\r\nx\r\n"
        )
        .0,
        250
    );
    b.wait_for("the refusal", || {
        b.log().contains("TLS handshake") && b.log().contains("status=deferred")
    });
    assert!(servers[1].queued().is_empty());
}

/// A satchel smarthost `smart.test` on `ip`: TLS from the first byte on
/// `smtps_port` (a certificate from the CA in `ca_dir`), AUTH for `edge`
/// with `password`, queueing what it takes.
fn smtps_smarthost(
    ip: [u8; 4],
    port: u16,
    smtps_port: u16,
    ca_dir: &std::path::Path,
    password: &str,
) -> Server {
    let listen = std::net::Ipv4Addr::from(ip);
    let mut smart = Server::prepare_at(
        ip,
        port,
        &format!(
            "hostname = smart.test\nrelay_networks = 127.0.0.99/32\ndefer_delivery = yes\n\
             smtps_listen = {listen}:{smtps_port}\n"
        ),
    );
    let (cert, key) = signed_cert(&smart.dir.0, ca_dir, "smart.test");
    let creds = smart.dir.0.join("users");
    std::fs::write(&creds, format!("edge:{}\n", sha512_crypt(password))).unwrap();
    let text = std::fs::read_to_string(&smart.conf).unwrap();
    std::fs::write(
        &smart.conf,
        format!(
            "{text}tls_cert = {cert}\ntls_key = {key}\nauth_users_file = {}\n",
            creds.display()
        ),
    )
    .unwrap();
    smart.spawn();
    smart
}

#[test]
fn satchel_relays_through_an_smtps_smarthost_with_auth_and_a_verified_certificate() {
    let dns = common::dns::TestDns::start();
    let (smart_ip, edge_ip) = ([127, 0, 0, 18], [127, 0, 0, 19]);
    let port = shared_port(&[smart_ip, edge_ip]);
    let smtps_port = shared_port(&[smart_ip]);
    dns.a("smart.test", smart_ip.into());
    let ca_dir = common::TempDir::new("smtps-ca");
    let ca = make_ca(&ca_dir.0);
    let smart = smtps_smarthost(smart_ip, port, smtps_port, &ca_dir.0, "pa55");
    assert!(smart
        .log()
        .contains("(submission over TLS from the first byte: AUTH required)"));
    let mut edge = Server::prepare_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\ndns_servers = {}\n\
             relayhost = smtps:[smart.test]:{smtps_port}\nrelayhost_tls = verify\ntls_ca_file = {ca}\n",
            dns.addr
        ),
    );
    let secret = edge.dir.0.join("relay-auth");
    std::fs::write(&secret, "edge:pa55\n").unwrap();
    let text = std::fs::read_to_string(&edge.conf).unwrap();
    std::fs::write(
        &edge.conf,
        format!("{text}relayhost_auth_file = {}\n", secret.display()),
    )
    .unwrap();
    edge.spawn();
    let mut c = Client::connect(edge.addr());
    c.hello();
    let (code, _) = c.mail(
        "cron@edge.test",
        &["admin@far.test"],
        b"Subject: via smtps\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    smart.wait_for("the smarthost's queue", || smart.queued().len() == 1);
    let id = smart.queued().pop().unwrap();
    let msg = String::from_utf8(smart.message(&id)).unwrap();
    assert!(msg.contains("with ESMTPSA id"), "{msg}");
    assert!(
        edge.log()
            .contains("smart.test[127.0.0.18]: TLS established"),
        "{}",
        edge.log()
    );
    assert!(
        smart
            .log()
            .contains("sasl_method=PLAIN, sasl_username=edge"),
        "{}",
        smart.log()
    );
}

/// The circuit breaker: a smarthost that refuses our password (535) gets
/// `relayhost_failure_limit` tries, then nothing more; the mail waits,
/// postmaster hears of it once, and a flush after the fix sends it all.
#[test]
fn a_smarthost_refusing_our_password_opens_the_breaker_and_a_flush_closes_it() {
    let dns = common::dns::TestDns::start();
    let (smart_ip, edge_ip) = ([127, 0, 0, 20], [127, 0, 0, 21]);
    let port = shared_port(&[smart_ip, edge_ip]);
    let smtps_port = shared_port(&[smart_ip]);
    dns.a("smart.test", smart_ip.into());
    let ca_dir = common::TempDir::new("breaker-ca");
    let ca = make_ca(&ca_dir.0);
    let smart = smtps_smarthost(smart_ip, port, smtps_port, &ca_dir.0, "right");
    let mut edge = Server::prepare_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nlocal_domains = edge.test\nrelay_networks = 127.0.0.0/8\n\
             defer_delivery = no\ndns_servers = {}\nrelayhost = smtps:[smart.test]:{smtps_port}\n\
             relayhost_tls = verify\ntls_ca_file = {ca}\nrelayhost_failure_limit = 2\n",
            dns.addr
        ),
    );
    let secret = edge.dir.0.join("relay-auth");
    std::fs::write(&secret, "edge:wrong\n").unwrap();
    let text = std::fs::read_to_string(&edge.conf).unwrap();
    std::fs::write(
        &edge.conf,
        format!("{text}relayhost_auth_file = {}\n", secret.display()),
    )
    .unwrap();
    edge.spawn();
    let send = |n: usize| {
        let mut c = Client::connect(edge.addr());
        c.hello();
        let body = format!("Subject: cron {n}\r\n\r\nx\r\n");
        assert_eq!(
            c.mail("cron@edge.test", &["admin@far.test"], body.as_bytes())
                .0,
            250
        );
    };
    send(1);
    edge.wait_for("the first refusal", || {
        edge.log().matches("status=deferred").count() >= 1
    });
    send(2);
    edge.wait_for("the breaker", || {
        edge.log().contains("refused us 2 times in a row")
    });
    send(3);
    edge.wait_for("the paused delivery", || {
        edge.log().contains("sending to it is paused until")
    });
    edge.wait_for("postmaster's notice", || {
        edge.maildir("postmaster").len() == 1
    });
    let notice = std::fs::read_to_string(&edge.maildir("postmaster")[0]).unwrap();
    assert!(
        notice.contains("Subject: relay host smtps:[smart.test]:"),
        "{notice}"
    );
    assert!(notice.contains("535"), "{notice}");
    // Two refusals reached the smarthost, not three; nothing bounced.
    assert_eq!(
        smart.log().matches("AUTH failed").count(),
        2,
        "{}",
        smart.log()
    );
    assert!(!edge.log().contains("status=bounced"), "{}", edge.log());
    edge.wait_for("all three waiting", || edge.queued().len() == 3);
    // The password fixed, a flush: everything goes.
    std::fs::write(&secret, "edge:right\n").unwrap();
    edge.signal("HUP");
    edge.wait_for("the reload", || {
        edge.log().contains("reloaded the configuration")
    });
    assert!(edge.run(&["queue", "flush"]).status.success());
    smart.wait_for("the three messages", || smart.queued().len() == 3);
}

/// Per-destination TLS levels towards MX hosts (tls_policy_file): verify
/// checks the certificate for the MX name, encrypt defers without
/// STARTTLS, none sends in plaintext to a server that offers TLS, and
/// dane-only waits.
#[test]
fn tls_policy_levels_per_destination() {
    let dns = common::dns::TestDns::start();
    let (edge_ip, tls_ip, plain_ip) = ([127, 0, 0, 23], [127, 0, 0, 24], [127, 0, 0, 25]);
    let port = shared_port(&[edge_ip, tls_ip, plain_ip]);
    for (domain, mx, ip) in [
        ("far.test", "mx.far.test", tls_ip),
        ("old.test", "mx.old.test", tls_ip),
        ("impostor.test", "mx.impostor.test", tls_ip),
        ("plain.test", "mx.plain.test", plain_ip),
        ("dane.test", "mx.dane.test", plain_ip),
    ] {
        dns.mx(domain, 10, mx);
        dns.a(mx, ip.into());
    }
    let ca_dir = common::TempDir::new("policy-ca");
    let ca = make_ca(&ca_dir.0);
    let receiving = "local_domains = far.test, old.test, impostor.test, plain.test, dane.test\n\
                     local_users = a\ndefer_delivery = yes\n";
    let mut tls_mx = Server::prepare_at(tls_ip, port, receiving);
    let (cert, key) = signed_cert(&tls_mx.dir.0, &ca_dir.0, "mx.far.test");
    let text = std::fs::read_to_string(&tls_mx.conf).unwrap();
    std::fs::write(
        &tls_mx.conf,
        format!("{text}tls_cert = {cert}\ntls_key = {key}\n"),
    )
    .unwrap();
    tls_mx.spawn();
    let plain_mx = Server::start_at(plain_ip, port, receiving);
    let policy = common::TempDir::new("policy");
    let file = policy.0.join("tls_policy");
    std::fs::write(
        &file,
        "far.test verify\nimpostor.test verify\nplain.test encrypt\nold.test none\ndane.test dane-only\n",
    )
    .unwrap();
    let edge = Server::start_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\ndns_servers = {}\n\
             relay_port = {port}\ntls_ca_file = {ca}\ntls_policy_file = {}\n",
            dns.addr,
            file.display()
        ),
    );
    let mut c = Client::connect(edge.addr());
    c.hello();
    for rcpt in [
        "a@far.test",
        "a@old.test",
        "a@impostor.test",
        "a@plain.test",
        "a@dane.test",
    ] {
        let body = format!("Subject: to {rcpt}\r\n\r\nx\r\n");
        assert_eq!(c.mail("x@edge.test", &[rcpt], body.as_bytes()).0, 250);
    }
    tls_mx.wait_for("two deliveries", || tls_mx.queued().len() == 2);
    let copies: Vec<String> = tls_mx
        .queued()
        .iter()
        .map(|id| String::from_utf8_lossy(&tls_mx.message(id)).into_owned())
        .collect();
    let of = |subject: &str| {
        copies
            .iter()
            .find(|c| c.contains(subject))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        of("to a@far.test").contains("with ESMTPS"),
        "verify: {copies:?}"
    );
    assert!(
        of("to a@old.test").contains("with ESMTP id"),
        "none: {copies:?}"
    );
    edge.wait_for("three deferrals", || {
        edge.log().matches("status=deferred").count() >= 3
    });
    let log = edge.log();
    for rcpt in ["a@impostor.test", "a@plain.test", "a@dane.test"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains("status=deferred")),
            "{rcpt}: {log}"
        );
    }
    assert!(
        log.contains("the MX records are not DNSSEC-validated (TLS policy dane-only)"),
        "{log}"
    );
    assert!(
        plain_mx.queued().is_empty(),
        "encrypt and dane-only sent nothing in plaintext"
    );
}

/// A satchel on `ip:port` that clients may STARTTLS into (a self-signed
/// certificate), relaying to `relay` (`relayhost = ...` and its lines).
fn requiretls_edge(ip: [u8; 4], port: u16, relay: &str) -> Server {
    let mut s = Server::prepare_at(
        ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n{relay}"
        ),
    );
    let (cert, key) = make_cert(&s.dir.0, "edge.test");
    s.add_conf(&format!("tls_cert = {cert}\ntls_key = {key}\n"));
    s.spawn();
    s
}

/// MAIL FROM REQUIRETLS from alice through STARTTLS (Python's smtplib);
/// prints what the server offered before and after STARTTLS.
const REQUIRETLS_CLIENT: &str = "import smtplib,ssl,sys\n\
     s=smtplib.SMTP(sys.argv[1].split(':')[0],int(sys.argv[1].split(':')[1]))\n\
     s.ehlo(); print('before', s.has_extn('requiretls'))\n\
     print('plain', s.docmd('MAIL FROM:<alice@satchel.test> REQUIRETLS')[0]); s.rset()\n\
     ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
     s.starttls(context=ctx); s.ehlo(); print('after', s.has_extn('requiretls'))\n\
     s.sendmail('alice@satchel.test',['x@far.test'],b'Subject: tls only\\r\\n\\r\\nsecret\\r\\n',['REQUIRETLS']); s.quit()";

#[test]
fn requiretls_mail_goes_only_over_verified_tls_to_hosts_that_offer_it() {
    let dns = common::dns::TestDns::start();
    let (a_ip, b_ip, c_ip) = ([127, 0, 0, 40], [127, 0, 0, 41], [127, 0, 0, 42]);
    let port = shared_port(&[a_ip, b_ip, c_ip]);
    dns.a("smart.test", b_ip.into());
    let ca_dir = common::TempDir::new("rtls-ca");
    let ca = make_ca(&ca_dir.0);
    let mut b = Server::prepare_at(
        b_ip,
        port,
        "hostname = smart.test\nrelay_networks = 127.0.0.0/8\n",
    );
    let (cert, key) = signed_cert(&b.dir.0, &ca_dir.0, "smart.test");
    b.add_conf(&format!("tls_cert = {cert}\ntls_key = {key}\n"));
    b.spawn();
    let relay = |tls: &str| {
        format!(
            "dns_servers = {}\nrelayhost = [smart.test]:{port}\nrelayhost_tls = {tls}\ntls_ca_file = {ca}\n",
            dns.addr
        )
    };
    // Verified TLS to a host that offers REQUIRETLS: relayed, with it.
    let a = requiretls_edge(a_ip, port, &relay("verify"));
    let run = |s: &Server| {
        let o = Command::new("python3")
            .args(["-c", REQUIRETLS_CLIENT, &s.addr().to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(run(&a), "before False\nplain 530\nafter True\n");
    a.wait_for("the copy at smart.test", || b.queued().len() == 1);
    let env = b.envelope(&b.queued()[0]);
    assert!(env.contains("\nrequiretls yes\n"), "{env}");
    // Opportunistic TLS is not enough: bounced with 5.7.30, the notice
    // itself REQUIRETLS mail.
    let c = requiretls_edge(c_ip, port, &relay("opportunistic"));
    run(&c);
    c.wait_for("the bounce", || c.maildir("alice").len() == 1);
    let bounce = std::fs::read_to_string(&c.maildir("alice")[0]).unwrap();
    assert!(bounce.contains("Status: 5.7.30"), "{bounce}");
    assert!(!bounce.contains("secret"), "no content in the notice");
    assert_eq!(b.queued().len(), 1, "nothing went without verified TLS");
}
