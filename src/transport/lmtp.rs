//! LMTP (RFC 2033): handing local recipients to a delivery agent such as
//! Dovecot's `lmtp` or Cyrus, over a UNIX socket (`lmtp:unix:/path`) or
//! TCP (`lmtp:[host]:port`). The dialogue is the SMTP client's
//! `MailTransaction` in its LMTP mode: LHLO instead of EHLO, PIPELINING
//! when offered, and after the final dot one reply per accepted
//! recipient (§4.2), each its own result. The same time-outs and retry
//! rules as SMTP: a connection that fails, or a 4xx, defers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

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

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

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

    /// Greeting, LHLO, the transaction, QUIT.
    fn session(&self, batch: &Batch, rcpts: &[String]) -> Result<Vec<Outcome>, String> {
        let stream = self.connect().map_err(|e| format!("connect: {e}"))?;
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
        let caps = Capabilities::from_ehlo(&lhlo);
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
        };
        let (mut t, mut step) = MailTransaction::start(&facts, &caps, false);
        loop {
            step = match step {
                Step::Send(bytes) => {
                    send(&mut c, &bytes)?;
                    t.reply(&reply(&mut c)?)
                }
                Step::Read => t.reply(&reply(&mut c)?),
                Step::SendContent => {
                    content(&mut c, batch)?;
                    match reply(&mut c) {
                        Ok(r) => t.reply(&r),
                        Err(e) => return t.lost(&e).ok_or(e),
                    }
                }
                Step::Done(outcomes) => {
                    let _ = send(&mut c, b"QUIT\r\n");
                    return Ok(outcomes);
                }
                Step::Broken(why) => return Err(why),
            };
        }
    }
}

/// One reply; an error for a broken line, a time-out or a closed
/// connection.
fn reply(c: &mut BufReader<Box<dyn Stream>>) -> Result<Reply, String> {
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

fn send(c: &mut BufReader<Box<dyn Stream>>, bytes: &[u8]) -> Result<(), String> {
    let s = c.get_mut();
    s.write_all(bytes)
        .and_then(|()| s.flush())
        .map_err(|e| format!("write: {e}"))
}

/// The message, dot-stuffed, and the final dot.
fn content(c: &mut BufReader<Box<dyn Stream>>, batch: &Batch) -> Result<(), String> {
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
