//! A scripted remote SMTP server for delivery tests: it answers each RCPT
//! as a test-supplied rule says (so a test can have a peer that defers
//! once, refuses one recipient, or stalls), and records what it received.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One received transaction.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// The MAIL and RCPT commands as sent (with their parameters).
    pub commands: Vec<String>,
}

/// The reply to `RCPT TO:<rcpt>` on connection number `conn` (from 0).
pub type Rule = dyn Fn(&str, usize) -> String + Send + Sync;

/// How connection number `conn` misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Accepts the connection and never says a word.
    NoGreeting,
    /// Answers everything with text that is not SMTP.
    Garbage,
    /// Accepts MAIL and RCPT, says 354, reads a little, then hangs up.
    DropInData,
    /// Reads the whole message and its final dot (recorded as received),
    /// then hangs up without a reply.
    DropAfterDot,
    /// Reads the whole message and its final dot (recorded as received),
    /// then resets the connection (as a server that crashed with our data
    /// unread would): the message was not taken.
    ResetAfterDot,
    /// Answers DATA with 250 instead of 354 (a server out of step).
    DataIs250,
    /// Offers STARTTLS, says 220 to it, then answers the client's TLS
    /// handshake with bytes that are not TLS (an old or broken server).
    BrokenTls,
    /// No fault: offers DSN (RFC 3461), as Postfix does.
    OffersDsn,
    /// No fault: offers CHUNKING (RFC 3030) and takes BDAT.
    OffersChunking,
}

pub type Faults = dyn Fn(usize) -> Fault + Send + Sync;

pub struct FakeSmtp {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeSmtp {
    pub fn start(addr: SocketAddr, rule: Box<Rule>) -> FakeSmtp {
        FakeSmtp::start_with(addr, rule, Box::new(|_| Fault::None))
    }

    pub fn start_with(addr: SocketAddr, rule: Box<Rule>, faults: Box<Faults>) -> FakeSmtp {
        let faults: Arc<Faults> = Arc::from(faults);
        let l = TcpListener::bind(addr).expect("bind fake smtp");
        let addr = l.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let rule: Arc<Rule> = Arc::from(rule);
        {
            let (got, connections, stop) = (got.clone(), connections.clone(), stop.clone());
            thread::spawn(move || {
                for s in l.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let n = connections.fetch_add(1, Ordering::SeqCst);
                    let (got, rule, fault) = (got.clone(), rule.clone(), faults(n));
                    thread::spawn(move || {
                        let _ = session(s, n, &*rule, &got, fault);
                    });
                }
            });
        }
        FakeSmtp {
            addr,
            got,
            connections,
            stop,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn session(
    s: TcpStream,
    n: usize,
    rule: &Rule,
    got: &Mutex<Vec<Received>>,
    fault: Fault,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    match fault {
        Fault::NoGreeting => {
            // Hold the line open, silent, until the client gives up.
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r, &mut sink);
            return Ok(());
        }
        Fault::Garbage => {
            w.write_all(b"hello there, this is not SMTP\r\n")?;
            let mut l = String::new();
            while r.read_line(&mut l)? > 0 {
                w.write_all(b"?? \x01\x02 what\r\n")?;
                l.clear();
            }
            return Ok(());
        }
        _ => {}
    }
    w.write_all(b"220 fake.test ESMTP\r\n")?;
    let mut cur = Received {
        from: String::new(),
        rcpts: Vec::new(),
        data: Vec::new(),
        commands: Vec::new(),
    };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        assert!(
            line.ends_with("\r\n"),
            "the client sent a line without CRLF: {line:?}"
        );
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") && fault == Fault::BrokenTls {
            "250-fake.test\r\n250-STARTTLS\r\n250 8BITMIME".to_string()
        } else if upper == "STARTTLS" && fault == Fault::BrokenTls {
            w.write_all(b"220 go ahead\r\n")?;
            let mut hello = [0u8; 512];
            let _ = std::io::Read::read(&mut r, &mut hello);
            w.write_all(b"this is no TLS server hello\r\n")?;
            return Ok(());
        } else if upper.starts_with("EHLO") && fault == Fault::OffersChunking {
            "250-fake.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME".to_string()
        } else if upper.starts_with("BDAT ") && fault == Fault::OffersChunking {
            let mut words = upper[5..].split(' ');
            let size: usize = words
                .next()
                .and_then(|n| n.parse().ok())
                .expect("BDAT size");
            let mut chunk = vec![0u8; size];
            std::io::Read::read_exact(&mut r, &mut chunk)?;
            cur.commands.push(cmd.clone());
            cur.data.extend_from_slice(&chunk);
            if words.next() == Some("LAST") {
                got.lock().expect("lock").push(cur.clone());
                "250 2.0.0 queued on fake".into()
            } else {
                format!("250 2.0.0 {size} octets")
            }
        } else if upper.starts_with("EHLO") && fault == Fault::OffersDsn {
            "250-fake.test\r\n250-8BITMIME\r\n250-DSN\r\n250 SIZE 100000000".to_string()
        } else if upper.starts_with("EHLO") {
            "250-fake.test\r\n250-8BITMIME\r\n250 SIZE 100000000".to_string()
        } else if upper.starts_with("HELO") {
            "250 fake.test".into()
        } else if upper.starts_with("MAIL FROM:") {
            cur = Received {
                from: cmd[10..].split(' ').next().unwrap_or("").to_string(),
                rcpts: Vec::new(),
                data: Vec::new(),
                commands: vec![cmd.clone()],
            };
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            cur.commands.push(cmd.clone());
            let path = cmd[8..].split(' ').next().unwrap_or("");
            let rcpt = path
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            let reply = rule(&rcpt, n);
            if reply.starts_with('2') {
                cur.rcpts.push(rcpt);
            }
            reply
        } else if upper == "DATA" && fault == Fault::DataIs250 {
            "250 2.0.0 ok".into()
        } else if upper == "DATA" {
            w.write_all(b"354 go ahead\r\n")?;
            if fault == Fault::DropInData {
                let mut some = [0u8; 16];
                let _ = std::io::Read::read(&mut r, &mut some);
                return Ok(()); // hang up in the middle of the message
            }
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                // satchel never sends a bare CR or LF (smuggling, the client side).
                let body = &l[..l.len().saturating_sub(2)];
                assert!(
                    l.ends_with(b"\r\n") && !body.contains(&b'\r') && !body.contains(&b'\n'),
                    "a DATA line without CRLF discipline: {l:?}"
                );
                let l = if l.starts_with(b".") {
                    l[1..].to_vec()
                } else {
                    l
                };
                data.extend_from_slice(&l);
            }
            cur.data = data;
            got.lock().expect("lock").push(cur.clone());
            if fault == Fault::DropAfterDot {
                return Ok(());
            }
            if fault == Fault::ResetAfterDot {
                got.lock().expect("lock").pop();
                socket2::SockRef::from(&w).set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
            "250 2.0.0 queued on fake".into()
        } else if upper == "RSET" || upper == "NOOP" {
            "250 ok".into()
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            "500 what?".into()
        };
        w.write_all(format!("{reply}\r\n").as_bytes())?;
    }
}
