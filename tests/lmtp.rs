//! LMTP (RFC 2033) to a delivery agent: `mailbox_transport` and
//! `lmtp:` next hops, with one result per recipient after the data. The
//! agent here is a small scripted server on a UNIX socket; Dovecot itself
//! is in scripts/interop.

mod common;

use common::{Client, Server, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

/// Serves LMTP on `path`: `ghost` is unknown at RCPT; after the data
/// `full` gets 452 (try later), `over` 552 (quota), everyone else 250.
/// Returns the lines it read.
fn agent(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    // An agent on a socket named `closing...` hangs up after each message.
    let closing = Arc::new(
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("closing")),
    );
    let listener = UnixListener::bind(path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = log.clone();
            let closing = closing.clone();
            std::thread::spawn(move || serve(conn, log, &closing));
        }
    });
    seen
}

fn serve(conn: std::os::unix::net::UnixStream, log: Arc<Mutex<Vec<String>>>, closing: &bool) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut say = |s: &str| {
        let _ = out.write_all(format!("{s}\r\n").as_bytes());
    };
    say("220 agent LMTP ready");
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end().to_string();
        log.lock().unwrap().push(l.clone());
        let upper = l.to_ascii_uppercase();
        if upper.starts_with("LHLO") {
            say("250-agent\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME");
        } else if upper.starts_with("MAIL") {
            say("250 2.1.0 OK");
        } else if upper.starts_with("RCPT") {
            if l.contains("<ghost@") {
                say("550 5.1.1 <ghost> User doesn't exist");
            } else {
                rcpts.push(l[9..].trim_matches(['<', '>']).to_string());
                say("250 2.1.5 OK");
            }
        } else if upper == "DATA" {
            say("354 OK");
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                log.lock().unwrap().push(line.trim_end().to_string());
                if line == ".\r\n" {
                    break;
                }
            }
            for rcpt in rcpts.drain(..) {
                match rcpt.split('@').next().unwrap_or("") {
                    "full" => say(&format!("452 4.2.2 <{rcpt}> Mailbox full, try later")),
                    "over" => say(&format!("552 5.2.2 <{rcpt}> Quota exceeded")),
                    _ => say(&format!("250 2.0.0 <{rcpt}> Saved")),
                }
            }
            if *closing {
                // A server that hangs up on idle sessions at once.
                return;
            }
        } else if upper == "QUIT" {
            say("221 2.0.0 Bye");
            return;
        } else {
            say("250 OK");
        }
    }
}

#[test]
fn local_recipients_go_over_lmtp_each_with_its_own_result() {
    let dir = TempDir::new("lmtp");
    let socket = dir.0.join("lmtp.sock");
    let seen = agent(&socket);
    let s = Server::start(&format!(
        "defer_delivery = no\nlocal_users = alice, bob, full, over, ghost\n\
         mailbox_transport = lmtp:unix:{}\n",
        socket.display()
    ));
    let mut c = Client::connect(s.addr());
    c.hello();
    let rcpts = [
        "alice@satchel.test",
        "full@satchel.test",
        "over@satchel.test",
        "ghost@satchel.test",
        "bob@satchel.test",
    ];
    let (code, text) = c.mail(
        "bob@satchel.test",
        &rcpts,
        b"Subject: over lmtp\r\n\r\n..dot line\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    s.wait_for("every recipient's result", || {
        let log = s.log();
        rcpts
            .iter()
            .all(|r| log.contains(&format!("{id}: to=<{r}>")))
    });
    let log = s.log();
    let relay = format!("relay=lmtp:unix:{}", socket.display());
    assert!(
        log.contains(&format!("{id}: to=<alice@satchel.test>, {relay}, "))
            && log.contains("status=sent (250 2.0.0 <alice@satchel.test> Saved)"),
        "{log}"
    );
    assert!(
        log.contains("status=deferred (452 4.2.2 <full@satchel.test> Mailbox full, try later)"),
        "{log}"
    );
    assert!(
        log.contains("status=bounced (552 5.2.2 <over@satchel.test> Quota exceeded)"),
        "{log}"
    );
    assert!(
        log.contains("status=bounced (550 5.1.1 <ghost> User doesn't exist)"),
        "{log}"
    );
    // The dialogue: LHLO, the dot-stuffed data; nothing written to mail_dir.
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l == "LHLO mx.satchel.test"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "..dot line"), "{lines:?}");
    assert!(s.maildir("alice").is_empty());
    // The bounce for over@ and ghost@ went to bob, over LMTP too; full@
    // waits for another try.
    s.wait_for("the bounce", || {
        seen.lock().unwrap().iter().any(|l| l == "MAIL FROM:<>")
    });
    s.wait_for("full@ waiting in the queue", || s.queued() == [id.clone()]);
    // What route and the queue listing say.
    let route =
        String::from_utf8_lossy(&s.run(&["route", "alice@satchel.test"]).stdout).into_owned();
    assert_eq!(
        route,
        format!(
            "alice@satchel.test: lmtp: alice@satchel.test to lmtp:unix:{}\n",
            socket.display()
        )
    );
}

#[test]
fn an_lmtp_agent_that_is_down_defers_and_a_bad_next_hop_is_refused() {
    let dir = TempDir::new("lmtpdown");
    let socket = dir.0.join("nobody-listens.sock");
    let s = Server::start(&format!(
        "defer_delivery = no\nmailbox_transport = lmtp:unix:{}\n",
        socket.display()
    ));
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail(
        "bob@satchel.test",
        &["alice@satchel.test"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let id = common::queue_id(&text);
    s.wait_for("the deferral", || {
        s.log().contains(&format!("{id}: to=<alice@satchel.test>"))
    });
    assert!(
        s.log().contains(&format!(
            "status=deferred (451 4.4.1 lmtp:unix:{}: connect: ",
            socket.display()
        )),
        "{}",
        s.log()
    );
    let bad = Server::prepare_at(
        [127, 0, 0, 1],
        common::free_port(),
        "mailbox_transport = lmtp:unix:relative.sock\n",
    );
    let out = bad.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the socket path must be absolute"), "{err}");
}

#[test]
fn an_lmtp_session_is_reused_for_the_next_message() {
    let dir = TempDir::new("lmtpreuse");
    let socket = dir.0.join("lmtp.sock");
    let seen = agent(&socket);
    let s = Server::start(&format!(
        "defer_delivery = no\nmailbox_transport = lmtp:unix:{}\n",
        socket.display()
    ));
    for n in 0..3 {
        let mut c = Client::connect(s.addr());
        c.hello();
        let body = format!("Subject: number {n}\r\n\r\nx\r\n");
        assert_eq!(
            c.mail("bob@satchel.test", &["alice@satchel.test"], body.as_bytes())
                .0,
            250
        );
        s.wait_for("the delivery", || {
            s.log().matches("relay=lmtp:unix:").count() == n + 1
        });
    }
    let lines = seen.lock().unwrap().clone();
    let count = |what: &str| lines.iter().filter(|l| l.starts_with(what)).count();
    assert_eq!(count("LHLO"), 1, "{lines:?}");
    assert_eq!(count("RSET"), 2, "{lines:?}");
    assert_eq!(count("MAIL FROM"), 3, "{lines:?}");
}

#[test]
fn a_reused_session_the_agent_closed_is_replaced_and_nothing_is_lost() {
    let dir = TempDir::new("lmtpstale");
    let socket = dir.0.join("closing.sock");
    let seen = agent(&socket);
    let s = Server::start(&format!(
        "defer_delivery = no\nmailbox_transport = lmtp:unix:{}\n",
        socket.display()
    ));
    for n in 0..2 {
        let mut c = Client::connect(s.addr());
        c.hello();
        let body = format!("Subject: number {n}\r\n\r\nx\r\n");
        assert_eq!(
            c.mail("bob@satchel.test", &["alice@satchel.test"], body.as_bytes())
                .0,
            250
        );
        s.wait_for("the delivery", || {
            s.log()
                .matches("status=sent (250 2.0.0 <alice@satchel.test> Saved)")
                .count()
                == n + 1
        });
    }
    let lines = seen.lock().unwrap().clone();
    let count = |what: &str| lines.iter().filter(|l| l.starts_with(what)).count();
    assert_eq!(count("LHLO"), 2, "{lines:?}");
    assert_eq!(count("Subject: number"), 2, "each message once: {lines:?}");
    assert!(s.log().contains("reused session gone"), "{}", s.log());
}
