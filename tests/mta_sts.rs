//! MTA-STS (RFC 8461) when delivering: policies served over HTTPS by a
//! Python server with a certificate from a test CA, `_mta-sts` TXT
//! records from the tests' DNS server, satchels as MX hosts. Enforce and
//! testing modes, an unlisted MX, an MX whose certificate does not verify,
//! a policy host with a bad certificate, a 10 MB policy, and kept
//! policies, valid and expired.
#![cfg(feature = "tls")]

mod common;

use common::dns::TestDns;
use common::pki::{make_ca, signed_for};
use common::{shared_port, Server};
use std::process::{Child, Command};

/// An HTTPS server on `ip:port` answering GET with the file of `dir`
/// named as the Host header (text/plain), 404 without one.
struct Https(Child);

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SERVER: &str = r#"
import http.server, os, ssl, sys
ip, port, cert, key, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        path = os.path.join(root, host)
        if self.path != "/.well-known/mta-sts.txt" or not os.path.isfile(path):
            self.send_error(404)
            return
        body = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer((ip, port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

fn https(ip: &str, port: u16, cert: &str, key: &str, root: &std::path::Path) -> Https {
    let mut child = Command::new("python3")
        .args(["-c", SERVER, ip, &port.to_string(), cert, key])
        .arg(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut ready = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    Https(child)
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[test]
fn policies_are_fetched_kept_and_followed() {
    let dns = TestDns::start();
    let (edge_ip, mx_ip, web_ip) = ([127, 0, 0, 29], [127, 0, 0, 30], [127, 0, 0, 31]);
    let port = shared_port(&[edge_ip, mx_ip, web_ip]);
    let ca_dir = common::TempDir::new("sts-ca");
    let ca = make_ca(&ca_dir.0);
    let domains = [
        "enforce.test",
        "unlisted.test",
        "badcert.test",
        "testing.test",
        "big.test",
        "badhttps.test",
        "expired.test",
        "kept.test",
    ];
    // One MX for all; its certificate names mx.good.test only.
    let mut mx = Server::prepare_at(
        mx_ip,
        port,
        &format!("local_domains = {}\nlocal_users = a\n", domains.join(", ")),
    );
    let (cert, key) = signed_for(&mx.dir.0, &ca_dir.0, &["mx.good.test"]);
    mx.add_conf(&format!("tls_cert = {cert}\ntls_key = {key}\n"));
    mx.spawn();
    dns.a("mx.good.test", mx_ip.into());
    dns.a("mx.other.test", mx_ip.into());
    let web = common::TempDir::new("sts-web");
    let names: Vec<String> = domains
        .iter()
        .filter(|d| **d != "badhttps.test")
        .map(|d| format!("mta-sts.{d}"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (wcert, wkey) = signed_for(&web.0, &ca_dir.0, &refs);
    let root = web.0.join("root");
    std::fs::create_dir(&root).unwrap();
    for d in domains {
        let mx_name = if d == "badcert.test" {
            "mx.other.test"
        } else {
            "mx.good.test"
        };
        dns.mx(d, 10, mx_name);
        dns.txt(&format!("_mta-sts.{d}"), "v=STSv1; id=20261203;");
        dns.a(&format!("mta-sts.{d}"), web_ip.into());
    }
    let write = |host: &str, text: &str| std::fs::write(root.join(host), text).unwrap();
    write("mta-sts.enforce.test", &policy("enforce", "mx.good.test"));
    write(
        "mta-sts.unlisted.test",
        &policy("enforce", "*.elsewhere.test"),
    );
    write("mta-sts.badcert.test", &policy("enforce", "mx.other.test"));
    write(
        "mta-sts.testing.test",
        &policy("testing", "mx.nowhere.test"),
    );
    write(
        "mta-sts.badhttps.test",
        &policy("enforce", "mx.nowhere.test"),
    );
    let huge = policy("enforce", "mx.nowhere.test") + &"# padding\r\n".repeat(1_000_000);
    write("mta-sts.big.test", &huge);
    // expired.test and kept.test serve nothing (404): only what is kept.
    let _web = https("127.0.0.31", port, &wcert, &wkey, &root);
    let mut edge = Server::prepare_at(
        edge_ip,
        port,
        &format!(
            "hostname = edge.test\nrelay_networks = 127.0.0.0/8\ndefer_delivery = no\n\
             dns_servers = {}\nrelay_port = {port}\nmta_sts_port = {port}\ntls_ca_file = {ca}\n",
            dns.addr
        ),
    );
    // Kept policies: an expired enforce one (no longer in force), and a
    // valid one whose refresh fails (still in force, RFC 8461 §5.1).
    let kept = edge.spool().join("mta-sts");
    std::fs::create_dir_all(&kept).unwrap();
    let unlisted = policy("enforce", "mx.nowhere.test");
    std::fs::write(
        kept.join("expired.test"),
        format!("id 1\nfetched 1000\n\n{unlisted}"),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = now - 2 * 3600;
    std::fs::write(
        kept.join("kept.test"),
        format!("id 1\nfetched {old}\n\n{unlisted}"),
    )
    .unwrap();
    edge.spawn();
    let rcpts: Vec<String> = domains.iter().map(|d| format!("a@{d}")).collect();
    edge.send_each("x@edge.test", &rcpts);
    edge.wait_for("five delivered", || mx.queued().len() == 5);
    edge.wait_for("three deferred", || {
        edge.log().matches("status=deferred").count() >= 3
    });
    let log = edge.log();
    let line = |d: &str| edge.log_for(&format!("a@{d}"));
    for d in [
        "enforce.test",
        "testing.test",
        "big.test",
        "badhttps.test",
        "expired.test",
    ] {
        assert!(line(d).contains("status=sent"), "{d}: {log}");
    }
    for d in ["unlisted.test", "badcert.test", "kept.test"] {
        assert!(line(d).contains("status=deferred"), "{d}: {log}");
    }
    assert!(
        log.contains("mx.good.test[127.0.0.30]:") && log.contains("; Verified TLS (tls_ca_file)"),
        "{log}"
    );
    assert!(line("unlisted.test")
        .contains("no MX host of unlisted.test is listed in its MTA-STS policy"));
    assert!(
        line("kept.test").contains("listed in its MTA-STS policy"),
        "{log}"
    );
    assert!(
        log.contains("domain=testing.test mx=mx.good.test mode=Testing result=validation-failure")
    );
    assert!(log.contains("domain=big.test policy_id=20261203 result=sts-policy-fetch-error"));
    assert!(log.contains("policy over 64 KiB"), "{log}");
    assert!(log.contains("domain=badhttps.test policy_id=20261203 result=sts-policy-fetch-error"));
    // Fetched policies are kept in the spool with their id.
    let record = std::fs::read_to_string(kept.join("enforce.test")).unwrap();
    assert!(record.starts_with("id 20261203\nfetched "), "{record}");
}
