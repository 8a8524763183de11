//! LMTP (RFC 2033): handing local recipients to a delivery agent such as
//! Dovecot's `lmtp` or Cyrus, over a UNIX socket (`lmtp:unix:/path`) or
//! TCP (`lmtp:[host]:port`). The dialogue is the SMTP client's
//! `MailTransaction` in its LMTP mode: LHLO instead of EHLO, PIPELINING
//! when offered, and after the final dot one reply per accepted
//! recipient (§4.2), each its own result. The same time-outs and retry
//! rules as SMTP: a connection that fails, or a 4xx, defers. A session
//! whose recipients were all taken stays open for the next message for
//! up to 2 s (as the SMTP sessions, and Postfix's connection cache); a
//! reused one is checked with RSET, and one that turns out to be gone
//! before the message was sent is replaced by a new one.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Batch, Delivery, Transport};
use crate::envelope::RcptState;
use crate::smtp::client::{
    Capabilities, DataEncoder, MailFacts, MailTransaction, Outcome, ReplyBuilder, Step,
};
use crate::smtp::reply::{Enhanced, Reply};
use crate::status::Status;

/// Where an LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    Unix(PathBuf),
    Tcp(String, u16),
}

impl LmtpTarget {
    /// `unix:/path`, `[host]:port` or `host:port` (after `lmtp:`).
    pub fn parse(s: &str) -> Result<LmtpTarget, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("'lmtp:{s}': the socket path must be absolute"));
            }
            return Ok(LmtpTarget::Unix(PathBuf::from(path)));
        }
        let s = s.strip_prefix("inet:").unwrap_or(s);
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("'lmtp:{s}': expected unix:/path or [host]:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("'lmtp:{s}': bad port '{port}'"))?;
        if host.is_empty() {
            return Err(format!("'lmtp:{s}': no host"));
        }
        Ok(LmtpTarget::Tcp(host.to_string(), port))
    }
}

impl std::fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpTarget::Unix(p) => write!(f, "lmtp:unix:{}", p.display()),
            LmtpTarget::Tcp(h, p) => write!(f, "lmtp:[{h}]:{p}"),
        }
    }
}

/// The LMTP transport for one batch.
pub struct Lmtp<'a> {
    pub target: &'a LmtpTarget,
    /// Our name in LHLO.
    pub hostname: &'a str,
    pub connect_timeout: Duration,
    /// Each reply (twice this for the replies after the final dot).
    pub command_timeout: Duration,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

type Conn = BufReader<Box<dyn Stream>>;

/// An open session waiting for the next message.
struct Idle {
    target: LmtpTarget,
    since: Instant,
    conn: Conn,
    caps: Capabilities,
}

static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());
const IDLE_TIME: Duration = Duration::from_secs(2);
const IDLE_MAX: usize = 16;

fn idle() -> std::sync::MutexGuard<'static, Vec<Idle>> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes the sessions idle longer than `IDLE_TIME` (the scheduler calls
/// it now and then); how many stay open.
pub fn expire_idle() -> usize {
    let now = Instant::now();
    let old: Vec<Idle> = {
        let mut all = idle();
        let (old, keep) = all
            .drain(..)
            .partition(|x| now.duration_since(x.since) > IDLE_TIME);
        *all = keep;
        old
    };
    for mut x in old {
        let _ = send(&mut x.conn, b"QUIT\r\n");
    }
    idle().len()
}

fn take_idle(target: &LmtpTarget) -> Option<(Conn, Capabilities)> {
    expire_idle();
    let mut all = idle();
    let i = all.iter().position(|x| x.target == *target)?;
    let x = all.swap_remove(i);
    Some((x.conn, x.caps))
}

/// How a transaction ended without outcomes.
enum Failure {
    /// A reused session that was gone before the message went: try a
    /// new one.
    Stale(String),
    Final(String),
}

impl Transport for Lmtp<'_> {
    fn deliver(&self, batch: &Batch) -> Delivery {
        let rcpts: Vec<String> = batch
            .rcpts
            .iter()
            .map(|&i| batch.env.rcpts[i].addr.bare())
            .collect();
        let outcomes = self.session(batch, &rcpts).unwrap_or_else(|why| {
            let s = Status::new(451, Enhanced(4, 4, 1), format!("{}: {why}", self.target));
            vec![Outcome::Deferred(s); rcpts.len()]
        });
        let states = outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Sent(s) => RcptState::Sent(s),
                Outcome::Deferred(s) => RcptState::Deferred(s),
                Outcome::Failed(s) => RcptState::Failed(s),
            })
            .collect();
        Delivery {
            states,
            relay: self.target.to_string(),
            remote_mta: None,
            success_notice: Some(crate::bounce::Action::Delivered),
        }
    }
}

impl Lmtp<'_> {
    fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let t = Some(self.command_timeout);
        match self.target {
            LmtpTarget::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
                Ok(Box::new(s))
            }
            LmtpTarget::Tcp(host, port) => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::other("no address"))?;
                let s = TcpStream::connect_timeout(&addr, self.connect_timeout)?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
                Ok(Box::new(s))
            }
        }
    }

    /// A reused session if there is one, else a new one; the transaction.
    fn session(&self, batch: &Batch, rcpts: &[String]) -> Result<Vec<Outcome>, String> {
        if let Some((conn, caps)) = take_idle(self.target) {
            match self.transaction(conn, &caps, batch, rcpts, true) {
                Ok(o) => return Ok(o),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Stale(e)) => {
                    log::info!("{}: reused session gone ({e}); a new one", self.target)
                }
            }
        }
        let (conn, caps) = self.open()?;
        self.transaction(conn, &caps, batch, rcpts, false)
            .map_err(|(Failure::Stale(e) | Failure::Final(e))| e)
    }

    /// Connected, greeted, LHLO answered.
    fn open(&self) -> Result<(Conn, Capabilities), String> {
        let stream = self.connect().map_err(|e| {
            crate::metrics::connect_failed("lmtp");
            format!("connect: {e}")
        })?;
        let mut c = BufReader::new(stream);
        let greeting = reply(&mut c)?;
        if greeting.code != 220 {
            return Err(format!("greeting: {}", greeting.one_line()));
        }
        send(&mut c, format!("LHLO {}\r\n", self.hostname).as_bytes())?;
        let lhlo = reply(&mut c)?;
        if lhlo.code != 250 {
            return Err(format!("LHLO: {}", lhlo.one_line()));
        }
        Ok((c, Capabilities::from_ehlo(&lhlo)))
    }

    /// One mail transaction on `c` (`reused`: RSET first); the session
    /// kept for the next message when every recipient was taken.
    fn transaction(
        &self,
        mut c: Conn,
        caps: &Capabilities,
        batch: &Batch,
        rcpts: &[String],
        reused: bool,
    ) -> Result<Vec<Outcome>, Failure> {
        let env = batch.env;
        let from = env.from.to_string();
        let facts = MailFacts {
            from: &from,
            rcpts,
            size: env.size,
            eight_bit: env.body == "8BITMIME",
            smtputf8: env.smtputf8 && caps.smtputf8,
            needs_smtputf8: false,
            lmtp: true,
            mail_dsn: "",
            rcpt_dsn: &[],
            requiretls: false,
        };
        let (mut t, mut step) = MailTransaction::start(&facts, caps, reused);
        // Before the content goes, a reused session that fails is stale.
        let early = |e: String| match reused {
            true => Failure::Stale(e),
            false => Failure::Final(e),
        };
        loop {
            step = match step {
                Step::Send(bytes) => {
                    send(&mut c, &bytes).map_err(early)?;
                    t.reply(&reply(&mut c).map_err(early)?)
                }
                Step::Read => t.reply(&reply(&mut c).map_err(early)?),
                Step::SendContent => {
                    content(&mut c, batch).map_err(Failure::Final)?;
                    match reply(&mut c) {
                        Ok(r) => t.reply(&r),
                        Err(e) => return t.lost(&e).ok_or(Failure::Final(e)),
                    }
                }
                Step::Done(outcomes) => {
                    keep_or_quit(c, self.target, caps, &outcomes);
                    return Ok(outcomes);
                }
                Step::Broken(why) => return Err(early(why)),
            };
        }
    }
}

/// Keeps a session whose recipients were all taken; QUIT otherwise.
fn keep_or_quit(mut c: Conn, target: &LmtpTarget, caps: &Capabilities, outcomes: &[Outcome]) {
    if outcomes.iter().all(|o| matches!(o, Outcome::Sent(_))) {
        let mut all = idle();
        if all.len() < IDLE_MAX {
            all.push(Idle {
                target: target.clone(),
                since: Instant::now(),
                conn: c,
                caps: caps.clone(),
            });
            return;
        }
    }
    let _ = send(&mut c, b"QUIT\r\n");
}

/// One reply; an error for a broken line, a time-out or a closed
/// connection.
fn reply(c: &mut Conn) -> Result<Reply, String> {
    let mut b = ReplyBuilder::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = c
            .by_ref()
            .take(4096)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(r) = b.push(text)? {
            return Ok(r);
        }
    }
}

fn send(c: &mut Conn, bytes: &[u8]) -> Result<(), String> {
    let s = c.get_mut();
    s.write_all(bytes)
        .and_then(|()| s.flush())
        .map_err(|e| format!("write: {e}"))
}

/// The message, dot-stuffed, and the final dot.
fn content(c: &mut Conn, batch: &Batch) -> Result<(), String> {
    let mut f = batch
        .content
        .open()
        .map_err(|e| format!("cannot read the queued message: {e}"))?;
    let mut enc = DataEncoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() + buf.len() / 8 + 8);
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read the queued message: {e}"))?;
        if n == 0 {
            break;
        }
        enc.encode(&buf[..n], &mut out);
        send(c, &out)?;
        out.clear();
    }
    enc.finish(&mut out);
    send(c, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_as_written() {
        let t = |s: &str| LmtpTarget::parse(s).map(|t| t.to_string());
        assert_eq!(
            t("unix:/run/dovecot/lmtp").unwrap(),
            "lmtp:unix:/run/dovecot/lmtp"
        );
        assert_eq!(t("[127.0.0.1]:24").unwrap(), "lmtp:[127.0.0.1]:24");
        assert_eq!(t("inet:localhost:2424").unwrap(), "lmtp:[localhost]:2424");
        assert!(t("unix:relative").unwrap_err().contains("absolute"));
        assert!(t("[h]:99999").unwrap_err().contains("bad port"));
        assert!(t("nothing").is_err());
    }
}
