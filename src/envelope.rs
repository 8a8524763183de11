//! The envelope of a queued message and its text encoding.
//!
//! An envelope is small, human-readable UTF-8: one `key value` per line,
//! starting with `version 2` and ending with `end` (like Postfix's required
//! END record: a file without it is damaged and is never acted upon).
//! Free text (HELO names, remote replies) is escaped so that a value is
//! always one line: `\` and control octets become `\xNN`.
//!
//! It is the head of a queue file, as in Postfix: the message content
//! follows it in the same file, at the offset given by `data` (the bytes
//! between `end` and that offset are newlines, room for the envelope to
//! be written after the content). Once delivery has changed the envelope,
//! the content stays where it was, in a file of its own: `data msg N` says
//! it is in `msg/<id>` from offset N. Version 1 envelopes, from before
//! queue files, have no `data`: their content is all of `msg/<id>`.
//! A `dsn` line belongs to the recipient above it: what its sender asked
//! to hear (RFC 3461: NOTIFY, `-` when not said, then ORCPT if given).
//!
//! ```text
//! version 2
//! id 0005F3A1B2C3D4E5
//! created 1795917257
//! client 192.0.2.1
//! helo client.example
//! protocol ESMTP
//! body 8BITMIME
//! smtputf8 no
//! size 812
//! from <a@example.org>
//! attempts 0
//! next-attempt 1795917257
//! ret HDRS
//! envid QQ+2B314
//! rcpt pending <c@example.net>
//! dsn SUCCESS,FAILURE rfc822;C+40example.net
//! rcpt failed <e@example.net> 550 5.1.1 User unknown
//! data 2048
//! end
//! ```
//!
//! No I/O: text in, text out. The spool writes and reads the files.

use std::fmt;

use crate::address::{ForwardPath, ReversePath};
use crate::dsn::{Notify, RcptDsn, Ret};
use crate::status::Status;

pub const VERSION: u32 = 2;

/// Where a queue file's message content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// In the queue file itself, from this offset (`data N`).
    Here(u64),
    /// In `msg/<id>`, from this offset (`data msg N`; version 1: 0).
    Msg(u64),
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptState {
    /// Not yet tried, or due for another try.
    Pending,
    /// Tried, failed temporarily; the last reason.
    Deferred(Status),
    /// Delivered; the accepting reply.
    Sent(Status),
    /// Failed for good; the reason (a bounce is owed).
    Failed(Status),
}

impl RcptState {
    fn keyword(&self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Deferred(_) => "deferred",
            RcptState::Sent(_) => "sent",
            RcptState::Failed(_) => "failed",
        }
    }

    /// The status of a tried recipient.
    pub fn status(&self) -> Option<&Status> {
        match self {
            RcptState::Pending => None,
            RcptState::Deferred(t) | RcptState::Sent(t) | RcptState::Failed(t) => Some(t),
        }
    }

    /// True while delivery still has to be attempted.
    pub fn is_open(&self) -> bool {
        matches!(self, RcptState::Pending | RcptState::Deferred(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub addr: ForwardPath,
    pub state: RcptState,
    /// Produced by alias expansion: delivered as is, never expanded again.
    /// Written with the key `expanded` instead of `rcpt`.
    pub expanded: bool,
    /// An alias (or `.forward`) target that is no address: a command or a
    /// file, on behalf of `addr` (written with the key `pipe` or `file`).
    pub via: Option<Via>,
    /// What the sender asked to hear about it (RFC 3461), written as a
    /// `dsn` line after it when anything was asked.
    pub dsn: RcptDsn,
}

/// A delivery target that is not an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    /// `|command` of the aliases, run through `/bin/sh -c`.
    Command(String),
    /// `/path/file` of the aliases, appended to as an mbox.
    File(String),
    /// `|command` of the recipient's `~/.forward` (runs as the recipient).
    ForwardCommand(String),
    /// `/path/file` of the recipient's `~/.forward`.
    ForwardFile(String),
}

impl Via {
    /// The command line or the path.
    pub fn target(&self) -> &str {
        match self {
            Via::Command(t) | Via::File(t) | Via::ForwardCommand(t) | Via::ForwardFile(t) => t,
        }
    }

    pub fn is_command(&self) -> bool {
        matches!(self, Via::Command(_) | Via::ForwardCommand(_))
    }

    /// From a `.forward` file, not the aliases.
    pub fn from_forward(&self) -> bool {
        matches!(self, Via::ForwardCommand(_) | Via::ForwardFile(_))
    }

    /// Its key in the envelope text.
    fn key(&self) -> &'static str {
        match self {
            Via::Command(_) => "pipe",
            Via::File(_) => "file",
            Via::ForwardCommand(_) => "fpipe",
            Via::ForwardFile(_) => "ffile",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    /// Arrival, seconds since the epoch.
    pub created: u64,
    /// Client IP address, or `localhost` for local submission.
    pub client: String,
    pub helo: String,
    pub protocol: String,
    /// `7BIT` or `8BITMIME` (RFC 6152).
    pub body: String,
    pub smtputf8: bool,
    /// Message file size in octets.
    pub size: u64,
    pub from: ReversePath,
    pub attempts: u32,
    /// Seconds since the epoch; 0 = now.
    pub next_attempt: u64,
    /// A delay warning was sent (`delay_warning_time`).
    pub warned: bool,
    /// The `DKIM-Signature:` fields (CRLF-terminated) made before the
    /// first remote delivery, sent ahead of the content by every later
    /// one; empty when not signed.
    pub dkim: String,
    /// RFC 3461 §4.3: what a failure notice returns, if the sender said.
    pub ret: Option<Ret>,
    /// RFC 3461 §4.4: the sender's envelope ID (xtext), if given.
    pub envid: Option<String>,
    /// RFC 8689: relayed only over verified TLS to hosts that offer
    /// REQUIRETLS (`requiretls yes`).
    pub requiretls: bool,
    pub rcpts: Vec<Recipient>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    pub line: usize,
    pub what: String,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// `\` and control octets as `\xNN`, so a value stays on one line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn unescape(s: &str) -> Result<String, &'static str> {
    if !s.contains('\\') {
        return Ok(s.to_string()); // nothing escaped: most values
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = s.get(i + 2..i + 4).filter(|_| b.get(i + 1) == Some(&b'x'));
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad escape")?;
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8")
}

/// `s` split at the first `sep` (an ASCII byte), without it. A plain
/// byte loop: envelope lines are short, and `str::split_once` sets up a
/// searcher for each one (a seventh of the time `queue list` spent
/// parsing).
fn split_at_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let p = s.bytes().position(|b| b == sep)?;
    // An ASCII byte is a char boundary on both sides.
    Some((&s[..p], &s[p + 1..]))
}

/// The lines of `text`, as `str::lines` gives them (split at `\n`, a
/// final `\r` dropped, no empty line after a final `\n`), with the same
/// byte loop as `split_at_byte`.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text).filter(|t| !t.is_empty());
    std::iter::from_fn(move || {
        let t = rest?;
        let (line, next) = split_at_byte(t, b'\n').unwrap_or((t, ""));
        rest = Some(next).filter(|n| !n.is_empty());
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// Splits `<path> rest` at the end of the path, honouring quoted local parts.
fn split_path(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let rest = s[i + 1..].strip_prefix(' ').unwrap_or(&s[i + 1..]);
                return (&s[..=i], rest);
            }
            _ => {}
        }
        i += 1;
    }
    (s, "")
}

impl Envelope {
    /// The envelope of a message made on this host (local submission, a
    /// bounce): client `localhost`, protocol `local`, every recipient
    /// pending; the body type follows the bytes.
    pub fn local(
        from: ReversePath,
        rcpts: Vec<ForwardPath>,
        helo: &str,
        now: u64,
        message: &[u8],
    ) -> Envelope {
        Envelope {
            id: String::new(),
            created: now,
            client: "localhost".into(),
            helo: helo.to_string(),
            protocol: "local".into(),
            body: if message.is_ascii() {
                "7BIT"
            } else {
                "8BITMIME"
            }
            .into(),
            // RFC 6531: an address that is not ASCII needs SMTPUTF8 on the
            // way out. (Header text alone does not set it: such mail went
            // out as 8BITMIME before, and still does.)
            smtputf8: !from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()),
            size: 0,
            from,
            attempts: 0,
            next_attempt: 0,
            warned: false,
            dkim: String::new(),
            ret: None,
            envid: None,
            requiretls: false,
            rcpts: rcpts
                .into_iter()
                .map(|addr| Recipient {
                    addr,
                    state: RcptState::Pending,
                    expanded: false,
                    via: None,
                    dsn: RcptDsn::default(),
                })
                .collect(),
        }
    }

    /// True when no recipient needs another attempt.
    pub fn is_done(&self) -> bool {
        self.rcpts.iter().all(|r| !r.state.is_open())
    }

    /// The envelope as text, with its content at `data`.
    pub fn to_text(&self, data: Data) -> String {
        let mut s = String::with_capacity(256 + 64 * self.rcpts.len());
        let mut kv = |k: &str, v: &str| {
            s.push_str(k);
            s.push(' ');
            s.push_str(v);
            s.push('\n');
        };
        kv("version", &VERSION.to_string());
        kv("id", &self.id);
        kv("created", &self.created.to_string());
        kv("client", &escape(&self.client));
        kv("helo", &escape(&self.helo));
        kv("protocol", &escape(&self.protocol));
        kv("body", &escape(&self.body));
        kv("smtputf8", if self.smtputf8 { "yes" } else { "no" });
        kv("size", &self.size.to_string());
        kv("from", &self.from.to_string());
        kv("attempts", &self.attempts.to_string());
        kv("next-attempt", &self.next_attempt.to_string());
        if self.warned {
            kv("warned", "yes");
        }
        if !self.dkim.is_empty() {
            kv("dkim", &escape(&self.dkim));
        }
        if let Some(ret) = self.ret {
            kv("ret", ret.keyword());
        }
        if let Some(envid) = &self.envid {
            kv("envid", &escape(envid));
        }
        if self.requiretls {
            kv("requiretls", "yes");
        }
        for r in &self.rcpts {
            let mut v = format!("{} {}", r.state.keyword(), r.addr);
            let key = match &r.via {
                None if r.expanded => "expanded",
                None => "rcpt",
                Some(via) => {
                    // The target, then the status after a tab (escaped
                    // text never holds one).
                    v.push(' ');
                    v.push_str(&escape(via.target()));
                    v.push('\t');
                    via.key()
                }
            };
            if let Some(st) = r.state.status() {
                if r.via.is_none() {
                    v.push(' ');
                }
                v.push_str(&escape(&st.to_string()));
            }
            kv(key, &v);
            if let Some(line) = dsn_line(&r.dsn) {
                kv("dsn", &line);
            }
        }
        match data {
            Data::Here(n) => kv("data", &n.to_string()),
            Data::Msg(n) => kv("data", &format!("msg {n}")),
        }
        s.push_str("end\n");
        s
    }

    /// Parses a whole envelope (a queue file's head, up to and with its
    /// `end` line), and where its content is.
    pub fn parse(text: &str) -> Result<(Envelope, Data), EnvelopeError> {
        let mut e = Envelope {
            id: String::new(),
            created: 0,
            client: String::new(),
            helo: String::new(),
            protocol: String::new(),
            body: "7BIT".into(),
            smtputf8: false,
            size: 0,
            from: ReversePath::Null,
            attempts: 0,
            next_attempt: 0,
            warned: false,
            dkim: String::new(),
            ret: None,
            envid: None,
            requiretls: false,
            rcpts: Vec::new(),
        };
        let mut version = 0;
        let mut data = None;
        let mut from = false;
        let mut ended = false;
        for (n, line) in lines(text).enumerate() {
            let err = |what: String| EnvelopeError { line: n + 1, what };
            if ended {
                return Err(err("data after 'end'".into()));
            }
            if line == "end" {
                ended = true;
                continue;
            }
            let (key, value) =
                split_at_byte(line, b' ').ok_or_else(|| err("expected 'key value'".into()))?;
            match key {
                "version" if version == 0 && n == 0 => {
                    version = number(value).map_err(err)?;
                    if version != 1 && version != u64::from(VERSION) {
                        return Err(err("unsupported version".into()));
                    }
                }
                _ if version == 0 => return Err(err("first line must be 'version'".into())),
                "data" if version >= 2 => data = Some(data_line(value).map_err(err)?),
                "from" => {
                    e.from =
                        ReversePath::parse(value).map_err(|x| err(format!("bad sender: {x}")))?;
                    from = true;
                }
                _ => e.set(key, value).map_err(err)?,
            }
        }
        // Counted only for an error: a second pass over every envelope
        // listed was a fifth of the parsing time.
        let err = |what: &str| EnvelopeError {
            line: text.lines().count() + 1,
            what: what.to_string(),
        };
        if !ended {
            return Err(err("no 'end' line: the envelope is incomplete"));
        }
        if e.id.is_empty() || !from || e.rcpts.is_empty() {
            return Err(err("missing id, from or rcpt"));
        }
        match data {
            Some(Data::Here(d)) if d < text.len() as u64 => {
                Err(err("'data' points into the envelope"))
            }
            Some(d) => Ok((e, d)),
            None if version >= 2 => Err(err("no 'data' line")),
            None => Ok((e, Data::Msg(0))),
        }
    }

    /// One `key value` line of the envelope's own fields.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "id" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err("bad id".into());
                }
                self.id = value.to_string();
            }
            "created" => self.created = number(value)?,
            "client" => self.client = unescape(value)?,
            "helo" => self.helo = unescape(value)?,
            "protocol" => self.protocol = unescape(value)?,
            "body" => self.body = unescape(value)?,
            "smtputf8" => self.smtputf8 = value == "yes",
            "size" => self.size = number(value)?,
            "attempts" => {
                self.attempts = u32::try_from(number(value)?).map_err(|_| "bad number")?
            }
            "next-attempt" => self.next_attempt = number(value)?,
            "warned" => self.warned = value == "yes",
            "dkim" => self.dkim = unescape(value)?,
            "ret" => self.ret = Some(Ret::parse(value).ok_or("bad ret")?),
            "envid" => self.envid = Some(unescape(value)?),
            "requiretls" => self.requiretls = value == "yes",
            "dsn" => {
                let last = self.rcpts.last_mut().ok_or("dsn before any rcpt")?;
                last.dsn = parse_dsn_line(value)?;
            }
            "rcpt" | "expanded" => self.rcpts.push(recipient(value, key == "expanded")?),
            "pipe" | "file" | "fpipe" | "ffile" => self.rcpts.push(recipient_via(value, key)?),
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }
}

/// `NOTIFY [ORCPT]` (`-` for a NOTIFY not given); `None` when the
/// sender asked nothing.
pub(crate) fn dsn_line(d: &RcptDsn) -> Option<String> {
    if d == &RcptDsn::default() {
        return None;
    }
    let notify = d.notify.value().unwrap_or_else(|| "-".into());
    Some(match &d.orcpt {
        Some(o) => format!("{notify} {}", escape(o)),
        None => notify,
    })
}

pub(crate) fn parse_dsn_line(v: &str) -> Result<RcptDsn, String> {
    let (notify, orcpt) = match split_at_byte(v, b' ') {
        Some((n, o)) => (n, Some(unescape(o)?)),
        None => (v, None),
    };
    let notify = match notify {
        "-" => Notify::default(),
        n => Notify::parse(n).ok_or("bad dsn notify")?,
    };
    Ok(RcptDsn { notify, orcpt })
}

fn number(v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|_| "bad number".into())
}

/// `data N` (the content at offset N of the queue file) or `data msg N`.
fn data_line(v: &str) -> Result<Data, String> {
    Ok(match v.strip_prefix("msg ") {
        Some(n) => Data::Msg(number(n)?),
        None => Data::Here(number(v)?),
    })
}

/// `STATE <path> [status]`: one recipient and what became of it.
fn recipient(value: &str, expanded: bool) -> Result<Recipient, String> {
    let (state, rest) = value.split_once(' ').ok_or("bad rcpt")?;
    let (path, text) = split_path(rest);
    let addr = ForwardPath::parse(path).map_err(|x| format!("bad recipient: {x}"))?;
    // Most statuses have nothing escaped: parsed where they are.
    let status = |class: u8| -> Result<Status, String> {
        Ok(match text.contains('\\') {
            true => Status::parse(&unescape(text)?, class),
            false => Status::parse(text, class),
        })
    };
    let state = match state {
        "pending" => RcptState::Pending,
        "deferred" => RcptState::Deferred(status(4)?),
        "sent" => RcptState::Sent(status(2)?),
        "failed" => RcptState::Failed(status(5)?),
        _ => return Err("bad recipient state".into()),
    };
    Ok(Recipient {
        addr,
        state,
        expanded,
        via: None,
        dsn: RcptDsn::default(),
    })
}

/// `STATE ADDR TARGET<tab>[STATUS]`: a command or file target.
fn recipient_via(value: &str, key: &str) -> Result<Recipient, String> {
    let (head, status) = value.split_once('\t').ok_or("bad pipe or file recipient")?;
    let (state, rest) = head.split_once(' ').ok_or("bad pipe or file recipient")?;
    let (path, target) = split_path(rest);
    if target.is_empty() {
        return Err("pipe or file recipient without its target".into());
    }
    let target = unescape(target)?;
    let mut r = recipient(&format!("{state} {path} {status}"), true)?;
    r.via = Some(match key {
        "pipe" => Via::Command(target),
        "file" => Via::File(target),
        "fpipe" => Via::ForwardCommand(target),
        _ => Via::ForwardFile(target),
    });
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_message_needs_smtputf8_only_for_what_is_not_ascii() {
        let from = ReversePath::parse("<a@b.test>").unwrap();
        let ascii = ForwardPath::parse("<c@d.test>").unwrap();
        let utf8 = ForwardPath::parse("<j\u{f6}rg@d.test>").unwrap();
        let plain = b"Subject: hi\r\n\r\nbody \xc3\xa9\r\n";
        assert!(!Envelope::local(from.clone(), vec![ascii.clone()], "h", 0, plain).smtputf8);
        assert!(Envelope::local(from.clone(), vec![utf8], "h", 0, plain).smtputf8);
        let header = "Subject: caf\u{e9}\r\n\r\nbody\r\n".as_bytes();
        assert!(!Envelope::local(from, vec![ascii], "h", 0, header).smtputf8);
    }

    fn sample() -> Envelope {
        Envelope {
            id: "0005F3A1B2C3D4E5".into(),
            created: 1_795_917_257,
            client: "192.0.2.1".into(),
            helo: "weird\r\nhelo\\name".into(),
            protocol: "ESMTP".into(),
            body: "8BITMIME".into(),
            smtputf8: false,
            size: 812,
            from: ReversePath::parse("<a@example.org>").unwrap(),
            attempts: 2,
            next_attempt: 1_795_917_557,
            warned: true,
            dkim: String::new(),
            ret: Some(Ret::Hdrs),
            envid: Some("QQ+2B314".into()),
            requiretls: true,
            rcpts: vec![
                Recipient {
                    addr: ForwardPath::parse("<c@example.net>").unwrap(),
                    state: RcptState::Pending,
                    expanded: false,
                    via: None,
                    dsn: RcptDsn::default(),
                },
                Recipient {
                    addr: ForwardPath::parse("<\"odd > name\"@example.net>").unwrap(),
                    state: RcptState::Failed(Status::parse("550 5.1.1 User unknown", 5)),
                    expanded: true,
                    via: None,
                    dsn: RcptDsn {
                        notify: Notify::parse("SUCCESS,FAILURE").unwrap(),
                        orcpt: Some("rfc822;odd+20name@example.net".into()),
                    },
                },
                Recipient {
                    addr: ForwardPath::Postmaster,
                    state: RcptState::Sent(Status::parse("250 ok", 2)),
                    expanded: false,
                    via: None,
                    dsn: RcptDsn::default(),
                },
                Recipient {
                    addr: ForwardPath::parse("<\"odd > name\"@example.net>").unwrap(),
                    state: RcptState::Deferred(Status::parse(
                        "451 4.3.0 command deferred (exit 75)",
                        4,
                    )),
                    expanded: true,
                    via: Some(Via::Command(
                        "procmail -a \"$EXTENSION\" > /x\tand a tab".into(),
                    )),
                    dsn: RcptDsn::default(),
                },
                Recipient {
                    addr: ForwardPath::parse("<list@example.net>").unwrap(),
                    state: RcptState::Pending,
                    expanded: true,
                    via: Some(Via::File("/var/mail/list archive".into())),
                    dsn: RcptDsn {
                        notify: Notify::parse("NEVER").unwrap(),
                        orcpt: None,
                    },
                },
                Recipient {
                    addr: ForwardPath::parse("<bob@example.net>").unwrap(),
                    state: RcptState::Pending,
                    expanded: true,
                    via: Some(Via::ForwardCommand("procmail".into())),
                    dsn: RcptDsn {
                        notify: Notify::default(),
                        orcpt: Some("utf-8;j\u{f6}rg@example.net".into()),
                    },
                },
            ],
        }
    }

    #[test]
    fn envelope_round_trips_through_text() {
        let e = sample();
        let text = e.to_text(Data::Here(2048));
        assert!(text.starts_with("version 2\n"));
        assert!(text.ends_with("\ndata 2048\nend\n"));
        assert!(
            text.contains("helo weird\\x0D\\x0Ahelo\\x5Cname\n"),
            "{text}"
        );
        assert_eq!(Envelope::parse(&text), Ok((e.clone(), Data::Here(2048))));
        // The content in a file of its own.
        let apart = e.to_text(Data::Msg(2048));
        assert!(apart.ends_with("\ndata msg 2048\nend\n"));
        assert_eq!(Envelope::parse(&apart), Ok((e.clone(), Data::Msg(2048))));
        // Version 1: no data line, the content is all of msg/<id>.
        let v1 = text
            .replace("version 2\n", "version 1\n")
            .replace("data 2048\n", "");
        assert_eq!(Envelope::parse(&v1), Ok((e, Data::Msg(0))));
    }

    #[test]
    fn envelope_without_end_is_damaged() {
        let text = sample().to_text(Data::Here(2048)).replace("end\n", "");
        assert!(Envelope::parse(&text).unwrap_err().what.contains("end"));
    }

    #[test]
    fn truncated_envelope_is_damaged_at_every_cut() {
        let text = sample().to_text(Data::Here(2048));
        for cut in 0..text.len() - 1 {
            if let Some(t) = text.get(..cut) {
                assert!(Envelope::parse(t).is_err(), "cut at {cut} parsed");
            }
        }
    }

    #[test]
    fn unknown_keys_and_versions_are_refused() {
        assert!(Envelope::parse("version 3\nend\n").is_err());
        let t = sample()
            .to_text(Data::Here(2048))
            .replace("size 812", "colour blue");
        assert!(Envelope::parse(&t).is_err());
        // Version 2 needs its data line, and it must point past the envelope.
        let t = sample().to_text(Data::Here(2048));
        assert!(Envelope::parse(&t.replace("data 2048\n", "")).is_err());
        assert!(Envelope::parse(&t.replace("data 2048", "data 10")).is_err());
        let v1 = t.replace("version 2\n", "version 1\n");
        assert!(Envelope::parse(&v1).is_err(), "no data line in version 1");
    }

    #[test]
    fn the_line_splitter_is_str_lines() {
        for t in [
            "", "\n", "a", "a\n", "a\r\nb", "a\n\nb\n", "\r\n\r\n", "x\ry\n", "é\nü",
        ] {
            assert_eq!(
                lines(t).collect::<Vec<_>>(),
                t.lines().collect::<Vec<_>>(),
                "{t:?}"
            );
        }
        assert_eq!(split_at_byte("key a value", b' '), Some(("key", "a value")));
        assert_eq!(split_at_byte("end", b' '), None);
    }

    #[test]
    fn open_recipients_decide_done() {
        let mut e = sample();
        e.rcpts.truncate(3);
        assert!(!e.is_done());
        e.rcpts[0].state = RcptState::Sent(Status::parse("250", 2));
        assert!(e.is_done());
    }
}
