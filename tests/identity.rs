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
