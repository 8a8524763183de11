//! The outbound SMTP dialogue without I/O: assembling multi-line replies,
//! reading an EHLO response into capabilities, building MAIL parameters,
//! the mail transaction as a state machine (`MailTransaction`: what to
//! send next, and what each reply means for each recipient), and the DATA
//! encoder (dot-stuffing, RFC 5321 §4.5.2, with every line end forced to
//! CRLF so no bare CR or LF ever leaves satchel). The socket loop that
//! drives them is `transport::smtp`.

use std::collections::VecDeque;

use super::reply::{parse_reply_line, split_enhanced, Enhanced, Reply, ReplyLine};
use crate::status::Status;

/// Collects reply lines until the last one. Returns `Err` for a line that
/// is not a reply line, or whose code differs from the first line's.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyBuilder {
    /// Feeds one line (CRLF removed). `Ok(Some(reply))` when complete.
    pub fn push(&mut self, line: &str) -> Result<Option<Reply>, String> {
        let (code, text, last) = match parse_reply_line(line) {
            Some(ReplyLine::More { code, text }) => (code, text, false),
            Some(ReplyLine::Last { code, text }) => (code, text, true),
            None => return Err(format!("malformed reply line: {}", printable(line))),
        };
        if self.code.is_some_and(|c| c != code) {
            return Err(format!("inconsistent reply codes: {}", printable(line)));
        }
        self.code = Some(code);
        self.lines.push(text.to_string());
        if !last {
            if self.lines.len() > 1000 {
                return Err("reply too long".into());
            }
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        self.code = None;
        let (enhanced, first) = split_enhanced(&lines[0]);
        let mut out: Vec<String> = vec![first.to_string()];
        for l in &lines[1..] {
            let (e, t) = split_enhanced(l);
            out.push(if e.is_some() && e == enhanced {
                t.to_string()
            } else {
                l.clone()
            });
        }
        Ok(Some(Reply {
            code,
            enhanced,
            lines: out,
        }))
    }
}

/// Peer text made safe for logs and reports.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What the server said it supports in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// RFC 1870: `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// RFC 4954 mechanisms offered, upper case.
    pub auth: Vec<String>,
    /// RFC 3461: DSN parameters are passed on.
    pub dsn: bool,
    /// RFC 3030: the content goes in BDAT chunks.
    pub chunking: bool,
    /// RFC 8689.
    pub requiretls: bool,
}

impl Capabilities {
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities {
            esmtp: true,
            ..Default::default()
        };
        for l in reply.lines.iter().skip(1) {
            let mut words = l.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => c.pipelining = true,
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "STARTTLS" => c.starttls = true,
                "DSN" => c.dsn = true,
                "CHUNKING" => c.chunking = true,
                "REQUIRETLS" => c.requiretls = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => c.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        c
    }
}

/// The `MAIL FROM` line for a transaction, with only the parameters the
/// server advertised (RFC 1870, RFC 6152, RFC 6531).
pub fn mail_command(
    from: &str,
    size: u64,
    eight_bit: bool,
    smtputf8: bool,
    caps: &Capabilities,
) -> String {
    let mut s = format!("MAIL FROM:{from}");
    if caps.size.is_some() {
        s.push_str(&format!(" SIZE={size}"));
    }
    if eight_bit && caps.eight_bit_mime {
        s.push_str(" BODY=8BITMIME");
    }
    if smtputf8 && caps.smtputf8 {
        s.push_str(" SMTPUTF8");
    }
    s
}

/// Encodes message content for DATA: doubles a leading dot (§4.5.2) and
/// turns any bare CR or bare LF into CRLF. `finish` adds the final CRLF
/// if needed and the terminating `.` line. For BDAT (`chunked`, RFC
/// 3030) the same but for the dots: none doubled, no final `.` line.
#[derive(Debug)]
pub struct DataEncoder {
    at_bol: bool,
    pending_cr: bool,
    /// Octets sent on the current line.
    col: usize,
    chunked: bool,
}

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
/// A longer one is broken with CRLF and a space, as Postfix's
/// smtp_line_length_limit does (the next hop, satchel included, would
/// refuse it whole).
const MAX_LINE: usize = 998;

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder {
            at_bol: true,
            pending_cr: false,
            col: 0,
            chunked: false,
        }
    }
}

impl DataEncoder {
    pub fn chunked() -> DataEncoder {
        DataEncoder {
            chunked: true,
            ..DataEncoder::default()
        }
    }

    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &c in input {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_bol = true;
                self.col = 0;
                if c == b'\n' {
                    continue;
                }
            }
            match c {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_bol = true;
                    self.col = 0;
                }
                _ => {
                    if self.col >= MAX_LINE {
                        out.extend_from_slice(b"\r\n ");
                        self.col = 1;
                        self.at_bol = false;
                    }
                    if self.at_bol && c == b'.' && !self.chunked {
                        out.push(b'.');
                        self.col += 1;
                    }
                    out.push(c);
                    self.col += 1;
                    self.at_bol = false;
                }
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.at_bol = true;
        }
        if !self.at_bol {
            out.extend_from_slice(b"\r\n");
            self.at_bol = true;
        }
        if !self.chunked {
            out.extend_from_slice(b".\r\n");
        }
    }
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent(Status),
    Deferred(Status),
    Failed(Status),
}

/// What a mail transaction needs to know of the message.
#[derive(Debug, Clone)]
pub struct MailFacts<'a> {
    /// The reverse-path with angle brackets (`<>` allowed).
    pub from: &'a str,
    /// Forward-paths without angle brackets.
    pub rcpts: &'a [String],
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// The message cannot go as ASCII (RFC 6531 §3.2): non-ASCII
    /// addresses or headers.
    pub needs_smtputf8: bool,
    /// LMTP (RFC 2033 §4.2): after the final dot, one reply for each
    /// accepted recipient, in the order of the RCPT commands.
    pub lmtp: bool,
    /// RFC 3461 parameters, sent when the server offers DSN: for MAIL
    /// (` RET=… ENVID=…`) and for each RCPT (` NOTIFY=… ORCPT=…`; empty,
    /// or one per recipient).
    pub mail_dsn: &'a str,
    pub rcpt_dsn: &'a [String],
    /// RFC 8689: MAIL carries REQUIRETLS, and a server that does not offer
    /// it does not get the message.
    pub requiretls: bool,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes, then read a reply and hand it to `reply`.
    Send(Vec<u8>),
    /// Read the next reply of a pipelined group and hand it to `reply`.
    Read,
    /// Send the message content and its final dot (or, when `chunking`,
    /// as BDAT chunks), then read the reply (within twice the command
    /// time-out: RFC 5321 §4.5.3.2.6).
    SendContent,
    /// Over: one outcome per recipient, in order.
    Done(Vec<Outcome>),
    /// The session is not usable (a reused one that refused RSET): the
    /// caller tries a new connection.
    Broken(String),
}

/// The reply the transaction waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to the final dot.
    Final,
    /// LMTP: the final reply for recipient `i`.
    FinalFor(usize),
    /// A reply read only to keep the session in step (the dot of an
    /// abandoned DATA, a closing RSET): the outcomes are known already.
    Courtesy,
}

/// One mail transaction as the client sees it, without I/O (RFC 5321
/// §3.3, RFC 2920 pipelining): it says what to send next and what each
/// reply means for each recipient; the caller moves the bytes.
#[derive(Debug)]
pub struct MailTransaction {
    pipelining: bool,
    lmtp: bool,
    /// RFC 3030: BDAT instead of DATA (never for LMTP here).
    chunking: bool,
    mail_line: String,
    rcpt_lines: Vec<String>,
    expect: VecDeque<Expect>,
    /// MAIL was refused: every recipient gets this.
    mail_refused: Option<Outcome>,
    /// Per recipient: `None` while accepted and waiting for the data.
    outcomes: Vec<Option<Outcome>>,
    /// Commands still to send, one reply each (`Courtesy`).
    then: VecDeque<Vec<u8>>,
}

impl MailTransaction {
    /// Checks what can be refused before anything is sent, then the first
    /// commands. `rset`: a reused session, checked with RSET first (in the
    /// same group as MAIL with PIPELINING, RFC 2920 §3.1).
    pub fn start(m: &MailFacts, caps: &Capabilities, rset: bool) -> (MailTransaction, Step) {
        let mut t = MailTransaction {
            pipelining: caps.pipelining,
            lmtp: m.lmtp,
            chunking: caps.chunking && !m.lmtp,
            mail_line: mail_command(m.from, m.size, m.eight_bit, m.smtputf8, caps)
                + if caps.dsn { m.mail_dsn } else { "" }
                + if m.requiretls { " REQUIRETLS" } else { "" },
            rcpt_lines: m
                .rcpts
                .iter()
                .enumerate()
                .map(|(i, r)| match m.rcpt_dsn.get(i).filter(|_| caps.dsn) {
                    Some(p) => format!("RCPT TO:<{r}>{p}"),
                    None => format!("RCPT TO:<{r}>"),
                })
                .collect(),
            expect: VecDeque::new(),
            mail_refused: None,
            outcomes: vec![None; m.rcpts.len()],
            then: VecDeque::new(),
        };
        if let Some(refused) = refused_before_sending(m, caps) {
            return (t, Step::Done(vec![refused; m.rcpts.len()]));
        }
        let step = if !t.pipelining {
            let first = if rset { Expect::Rset } else { Expect::Mail };
            t.expect.push_back(first);
            Step::Send(line(if rset { "RSET" } else { &t.mail_line }))
        } else {
            let mut batch = Vec::new();
            if rset {
                batch.extend(line("RSET"));
                t.expect.push_back(Expect::Rset);
            }
            batch.extend(line(&t.mail_line));
            t.expect.push_back(Expect::Mail);
            for (i, l) in t.rcpt_lines.iter().enumerate() {
                batch.extend(line(l));
                t.expect.push_back(Expect::Rcpt(i));
            }
            if !t.chunking {
                batch.extend(line("DATA"));
                t.expect.push_back(Expect::Data);
            }
            Step::Send(batch)
        };
        (t, step)
    }

    /// The next reply, for what the transaction is waiting for.
    pub fn reply(&mut self, r: &Reply) -> Step {
        match self.expect.pop_front() {
            Some(Expect::Rset) => self.on_rset(r),
            Some(Expect::Mail) => self.on_mail(r),
            Some(Expect::Rcpt(i)) => self.on_rcpt(i, r),
            Some(Expect::Data) => self.on_data(r),
            Some(Expect::Final) => self.finish(r),
            Some(Expect::FinalFor(i)) => self.finish_one(i, r),
            Some(Expect::Courtesy) | None => self.next_courtesy(),
        }
    }

    /// The connection failed while waiting for a reply: the outcomes when
    /// they are known (only courtesy replies were left) or the message is
    /// past its final dot (deferred: the server may have taken it, so no
    /// other host gets it now, RFC 1047); `None` when the host took no part.
    pub fn lost(&mut self, why: &str) -> Option<Vec<Outcome>> {
        match self.expect.front() {
            Some(Expect::Courtesy) => Some(self.outcomes_now()),
            Some(Expect::Final | Expect::FinalFor(_)) => {
                let s = Status::new(
                    451,
                    Enhanced(4, 4, 2),
                    format!("no reply after the end of the data: {why}"),
                );
                Some(self.settle(Outcome::Deferred(s)))
            }
            _ => None,
        }
    }

    /// True while the reply to the final dot is awaited.
    pub fn awaits_final_reply(&self) -> bool {
        matches!(
            self.expect.front(),
            Some(Expect::Final | Expect::FinalFor(_))
        )
    }

    fn on_rset(&mut self, r: &Reply) -> Step {
        if r.code != 250 {
            return Step::Broken(format!("RSET: {}", printable(&r.one_line())));
        }
        if self.pipelining {
            return Step::Read;
        }
        self.expect.push_back(Expect::Mail);
        Step::Send(line(&self.mail_line))
    }

    fn on_mail(&mut self, r: &Reply) -> Step {
        if r.code != 250 {
            self.mail_refused = Some(verdict(r));
            if self.pipelining {
                return Step::Read; // the RCPT and DATA replies still come
            }
            return self.close_with(&["RSET"]);
        }
        if self.pipelining {
            return Step::Read;
        }
        match self.rcpt_lines.first() {
            Some(l) => {
                self.expect.push_back(Expect::Rcpt(0));
                Step::Send(line(l))
            }
            None => self.close_with(&["RSET"]),
        }
    }

    fn on_rcpt(&mut self, i: usize, r: &Reply) -> Step {
        if let Some(o) = self.outcomes.get_mut(i) {
            *o = match r.code {
                250 | 251 => None,
                _ => Some(verdict(r)),
            };
        }
        let last = i + 1 == self.rcpt_lines.len();
        if self.chunking && last {
            return self.chunks_next();
        }
        if self.pipelining {
            return Step::Read;
        }
        if let Some(l) = self.rcpt_lines.get(i + 1) {
            self.expect.push_back(Expect::Rcpt(i + 1));
            return Step::Send(line(l));
        }
        if self.accepted() == 0 {
            return self.close_with(&["RSET"]);
        }
        self.expect.push_back(Expect::Data);
        Step::Send(line("DATA"))
    }

    /// RFC 3030: after the last RCPT reply, the content goes in chunks,
    /// when MAIL and a recipient were taken.
    fn chunks_next(&mut self) -> Step {
        if self.mail_refused.is_some() || self.accepted() == 0 {
            return self.close_with(&["RSET"]);
        }
        self.expect.push_back(Expect::Final);
        Step::SendContent
    }

    /// The content goes as BDAT chunks (see `Step::SendContent`).
    pub fn chunking(&self) -> bool {
        self.chunking
    }

    fn on_data(&mut self, r: &Reply) -> Step {
        let refused = self.mail_refused.is_some() || self.accepted() == 0;
        if refused {
            // A server that took DATA anyway: end it without content.
            let mut close: Vec<&str> = Vec::new();
            if r.code == 354 {
                close.push(".");
            }
            if self.mail_refused.is_some() {
                close.push("RSET");
            }
            return self.close_with(&close);
        }
        match r.code {
            354 if self.lmtp => {
                let accepted = (0..self.outcomes.len()).filter(|&i| self.outcomes[i].is_none());
                self.expect.extend(accepted.map(Expect::FinalFor));
                Step::SendContent
            }
            354 => {
                self.expect.push_back(Expect::Final);
                Step::SendContent
            }
            c if c >= 400 => self.finish(r),
            _ => {
                // Only 354 starts the content (§4.1.1.4); any other
                // positive reply is the server out of step, never a
                // delivery.
                let out_of_step = Status::new(
                    451,
                    Enhanced(4, 5, 0),
                    format!("unexpected reply to DATA: {}", printable(&r.one_line())),
                );
                self.settle(Outcome::Deferred(out_of_step));
                self.close_with(&["RSET"])
            }
        }
    }

    /// The reply to the final dot (or a refused DATA) for every recipient
    /// still waiting.
    fn finish(&mut self, r: &Reply) -> Step {
        let o = match r.code {
            250 => Outcome::Sent(said(r)),
            _ => verdict(r),
        };
        Step::Done(self.settle(o))
    }

    /// LMTP: the final reply for one recipient; done after the last.
    fn finish_one(&mut self, i: usize, r: &Reply) -> Step {
        if let Some(slot) = self.outcomes.get_mut(i) {
            *slot = Some(match r.code {
                250 => Outcome::Sent(said(r)),
                _ => verdict(r),
            });
        }
        match self.expect.front() {
            Some(Expect::FinalFor(_)) => Step::Read,
            _ => Step::Done(self.outcomes_now()),
        }
    }

    /// `o` for every accepted recipient; all outcomes, in order.
    fn settle(&mut self, o: Outcome) -> Vec<Outcome> {
        for slot in self.outcomes.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(o.clone());
        }
        self.outcomes_now()
    }

    fn outcomes_now(&self) -> Vec<Outcome> {
        if let Some(o) = &self.mail_refused {
            return vec![o.clone(); self.outcomes.len()];
        }
        let none = Outcome::Deferred(Status::new(451, Enhanced(4, 4, 2), "no reply"));
        self.outcomes
            .iter()
            .map(|o| o.clone().unwrap_or_else(|| none.clone()))
            .collect()
    }

    /// Sends `commands` one at a time, each reply only read; then done.
    fn close_with(&mut self, commands: &[&str]) -> Step {
        self.then.extend(commands.iter().map(|c| line(c)));
        self.next_courtesy()
    }

    fn next_courtesy(&mut self) -> Step {
        match self.then.pop_front() {
            Some(bytes) => {
                self.expect.push_back(Expect::Courtesy);
                Step::Send(bytes)
            }
            None => Step::Done(self.outcomes_now()),
        }
    }

    fn accepted(&self) -> usize {
        self.outcomes.iter().filter(|o| o.is_none()).count()
    }
}

/// What can be refused for every recipient before anything is sent.
fn refused_before_sending(m: &MailFacts, caps: &Capabilities) -> Option<Outcome> {
    // RFC 1870 §6.1: a message larger than the announced limit.
    if let Some(limit) = caps.size.filter(|&l| l > 0 && m.size > l) {
        return Some(Outcome::Failed(Status::new(
            552,
            Enhanced(5, 3, 4),
            format!(
                "message size {} exceeds the remote limit of {limit}",
                m.size
            ),
        )));
    }
    // RFC 8689 §4.2.1: REQUIRETLS mail only to a server that offers it.
    if m.requiretls && !caps.requiretls {
        return Some(Outcome::Failed(Status::new(
            550,
            Enhanced(5, 7, 30),
            "REQUIRETLS support required: the server does not offer it",
        )));
    }
    // RFC 6531 §3.2: mail that needs SMTPUTF8 cannot go to a server
    // without it; mail flagged SMTPUTF8 that is all ASCII goes as any
    // other (as in Postfix).
    if m.smtputf8 && !caps.smtputf8 && m.needs_smtputf8 {
        return Some(Outcome::Failed(Status::new(
            553,
            Enhanced(5, 6, 7),
            "remote server does not support SMTPUTF8",
        )));
    }
    None
}

/// A refusal: permanent (5xx) or not.
fn verdict(r: &Reply) -> Outcome {
    if r.code >= 500 {
        Outcome::Failed(said(r))
    } else {
        Outcome::Deferred(said(r))
    }
}

/// A peer's reply as a status, its text made printable for logs.
/// A peer's reply as a status: on one line, made printable and cut to
/// 300 characters (`printable`), so a peer's thousand-line reply cannot
/// swell an envelope, a log line or a bounce.
pub fn said(r: &Reply) -> Status {
    let class = match r.code / 100 {
        2 => 2,
        5 => 5,
        _ => 4,
    };
    Status::parse(&printable(&r.one_line()), class)
}

fn line(command: &str) -> Vec<u8> {
    format!("{command}\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as it arrives on the wire.
    fn wire(text: &str) -> Reply {
        let mut b = ReplyBuilder::default();
        for l in text.split("\r\n").filter(|l| !l.is_empty()) {
            if let Some(r) = b.push(l).unwrap() {
                return r;
            }
        }
        panic!("incomplete reply {text:?}")
    }

    fn sent(step: &Step) -> String {
        match step {
            Step::Send(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("expected bytes to send, got {other:?}"),
        }
    }

    fn facts(rcpts: &[String]) -> MailFacts<'_> {
        MailFacts {
            from: "<a@b.test>",
            rcpts,
            size: 100,
            eight_bit: false,
            smtputf8: false,
            needs_smtputf8: false,
            lmtp: false,
            mail_dsn: "",
            rcpt_dsn: &[],
            requiretls: false,
        }
    }

    fn words(o: &[Outcome]) -> Vec<String> {
        o.iter()
            .map(|o| match o {
                Outcome::Sent(s) => format!("sent {s}"),
                Outcome::Deferred(s) => format!("deferred {s}"),
                Outcome::Failed(s) => format!("failed {s}"),
            })
            .collect()
    }

    #[test]
    fn lmtp_reads_one_final_reply_for_each_accepted_recipient() {
        // RFC 2033 §4.2: x refused at RCPT, y and z get their own replies.
        let rcpts = ["x@d.test", "y@d.test", "z@d.test"].map(String::from);
        let caps = Capabilities {
            pipelining: true,
            ..Default::default()
        };
        let f = MailFacts {
            lmtp: true,
            ..facts(&rcpts)
        };
        let (mut t, _) = MailTransaction::start(&f, &caps, false);
        assert_eq!(t.reply(&wire("250 2.1.0 Ok\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("550 5.1.1 no such user\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("250 2.1.5 Ok\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("250 2.1.5 Ok\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("354 go ahead\r\n")), Step::SendContent);
        assert!(t.awaits_final_reply());
        assert_eq!(t.reply(&wire("250 2.0.0 <y@d.test> Saved\r\n")), Step::Read);
        assert!(t.awaits_final_reply());
        let Step::Done(o) = t.reply(&wire("552 5.2.2 <z@d.test> Quota exceeded\r\n")) else {
            panic!()
        };
        assert_eq!(
            words(&o),
            [
                "failed 550 5.1.1 no such user",
                "sent 250 2.0.0 <y@d.test> Saved",
                "failed 552 5.2.2 <z@d.test> Quota exceeded"
            ]
        );
        // The connection lost between two of those replies: the rest wait.
        let (mut t, _) = MailTransaction::start(&f, &caps, false);
        for r in ["250 Ok", "250 Ok", "250 Ok", "250 Ok", "354 go"] {
            t.reply(&wire(&format!("{r}\r\n")));
        }
        t.reply(&wire("250 2.0.0 Saved\r\n"));
        let o = t.lost("reset").unwrap();
        assert!(matches!(o[0], Outcome::Sent(_)), "{o:?}");
        assert!(matches!(o[2], Outcome::Deferred(_)), "{o:?}");
    }

    #[test]
    fn pipelined_transaction_sends_one_group_and_reads_the_replies_in_order() {
        let rcpts = ["x@d.test".to_string(), "y@d.test".to_string()];
        let caps = Capabilities {
            pipelining: true,
            size: Some(0),
            ..Default::default()
        };
        let (mut t, step) = MailTransaction::start(&facts(&rcpts), &caps, false);
        assert_eq!(
            sent(&step),
            "MAIL FROM:<a@b.test> SIZE=100\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\nDATA\r\n"
        );
        assert_eq!(t.reply(&wire("250 2.1.0 Ok\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("250 2.1.5 Ok\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("550 5.1.1 no such user\r\n")), Step::Read);
        assert_eq!(t.reply(&wire("354 go ahead\r\n")), Step::SendContent);
        assert!(t.awaits_final_reply());
        let Step::Done(o) = t.reply(&wire("250 2.0.0 queued as X\r\n")) else {
            panic!()
        };
        assert_eq!(
            words(&o),
            [
                "sent 250 2.0.0 queued as X",
                "failed 550 5.1.1 no such user"
            ]
        );
    }

    #[test]
    fn without_pipelining_each_command_waits_for_its_reply() {
        let rcpts = ["x@d.test".to_string()];
        let (mut t, step) = MailTransaction::start(&facts(&rcpts), &Capabilities::default(), true);
        assert_eq!(sent(&step), "RSET\r\n", "a reused session is checked first");
        assert_eq!(
            sent(&t.reply(&wire("250 Ok\r\n"))),
            "MAIL FROM:<a@b.test>\r\n"
        );
        assert_eq!(
            sent(&t.reply(&wire("250 Ok\r\n"))),
            "RCPT TO:<x@d.test>\r\n"
        );
        assert_eq!(sent(&t.reply(&wire("250 Ok\r\n"))), "DATA\r\n");
        assert_eq!(t.reply(&wire("354 go\r\n")), Step::SendContent);
        let Step::Done(o) = t.reply(&wire("451 4.3.0 try later\r\n")) else {
            panic!()
        };
        assert_eq!(words(&o), ["deferred 451 4.3.0 try later"]);
    }

    #[test]
    fn with_chunking_no_data_command_is_sent_and_the_content_follows_the_rcpts() {
        let rcpts = ["x@d.test", "y@d.test"].map(String::from);
        for pipelining in [true, false] {
            let caps = Capabilities {
                pipelining,
                chunking: true,
                ..Default::default()
            };
            let (mut t, step) = MailTransaction::start(&facts(&rcpts), &caps, false);
            assert!(t.chunking() && !sent(&step).contains("DATA"));
            if !pipelining {
                assert_eq!(
                    t.reply(&wire("250 ok\r\n")),
                    Step::Send(line("RCPT TO:<x@d.test>"))
                );
                t.reply(&wire("550 no\r\n"));
            } else {
                assert_eq!(t.reply(&wire("250 ok\r\n")), Step::Read);
                assert_eq!(t.reply(&wire("550 no\r\n")), Step::Read);
            }
            assert_eq!(t.reply(&wire("250 ok\r\n")), Step::SendContent);
            let Step::Done(o) = t.reply(&wire("250 2.0.0 queued\r\n")) else {
                panic!()
            };
            assert_eq!(words(&o), ["failed 550 no", "sent 250 2.0.0 queued"]);
        }
        // Nobody taken: no content, an RSET.
        let caps = Capabilities {
            pipelining: true,
            chunking: true,
            ..Default::default()
        };
        let (mut t, _) = MailTransaction::start(&facts(&rcpts), &caps, false);
        t.reply(&wire("250 ok\r\n"));
        t.reply(&wire("550 no\r\n"));
        assert_eq!(t.reply(&wire("550 no\r\n")), Step::Send(line("RSET")));
        // BDAT content: dots as they are, CR LF made, no final dot.
        let mut enc = DataEncoder::chunked();
        let mut out = Vec::new();
        enc.encode(b".a\nb", &mut out);
        enc.finish(&mut out);
        assert_eq!(out, b".a\r\nb\r\n");
    }

    #[test]
    fn dsn_parameters_go_only_to_a_server_that_offers_dsn() {
        let rcpts = ["x@d.test", "y@d.test"].map(String::from);
        let rcpt_dsn = [" NOTIFY=SUCCESS".to_string(), String::new()];
        let f = MailFacts {
            mail_dsn: " RET=HDRS ENVID=e1",
            rcpt_dsn: &rcpt_dsn,
            ..facts(&rcpts)
        };
        let mut caps = Capabilities {
            pipelining: true,
            ..Default::default()
        };
        let (_, step) = MailTransaction::start(&f, &caps, false);
        assert_eq!(
            sent(&step),
            "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\nDATA\r\n"
        );
        caps.dsn = true;
        let (_, step) = MailTransaction::start(&f, &caps, false);
        assert_eq!(
            sent(&step),
            "MAIL FROM:<a@b.test> RET=HDRS ENVID=e1\r\nRCPT TO:<x@d.test> NOTIFY=SUCCESS\r\nRCPT TO:<y@d.test>\r\nDATA\r\n"
        );
    }

    #[test]
    fn a_refused_mail_command_answers_for_every_recipient_and_ends_data() {
        let rcpts = ["x@d.test".to_string(), "y@d.test".to_string()];
        let caps = Capabilities {
            pipelining: true,
            ..Default::default()
        };
        let (mut t, _) = MailTransaction::start(&facts(&rcpts), &caps, false);
        assert_eq!(t.reply(&wire("553 5.7.1 sender refused\r\n")), Step::Read);
        t.reply(&wire("503 need MAIL\r\n"));
        t.reply(&wire("503 need MAIL\r\n"));
        // A server that says 354 anyway gets an empty message, then RSET.
        assert_eq!(sent(&t.reply(&wire("354 go\r\n"))), ".\r\n");
        assert_eq!(sent(&t.reply(&wire("554 no\r\n"))), "RSET\r\n");
        let Step::Done(o) = t.reply(&wire("250 Ok\r\n")) else {
            panic!()
        };
        assert_eq!(words(&o), vec!["failed 553 5.7.1 sender refused"; 2]);
    }

    #[test]
    fn a_positive_reply_to_data_other_than_354_is_never_a_delivery() {
        let rcpts = ["x@d.test".to_string()];
        let (mut t, _) = MailTransaction::start(&facts(&rcpts), &Capabilities::default(), false);
        t.reply(&wire("250 Ok\r\n"));
        t.reply(&wire("250 Ok\r\n"));
        assert_eq!(sent(&t.reply(&wire("250 Ok\r\n"))), "RSET\r\n");
        let Step::Done(o) = t.reply(&wire("250 Ok\r\n")) else {
            panic!()
        };
        assert_eq!(
            words(&o),
            ["deferred 451 4.5.0 unexpected reply to DATA: 250 Ok"]
        );
    }

    #[test]
    fn a_lost_reply_after_the_dot_defers_and_before_it_is_the_hosts_failure() {
        let rcpts = ["x@d.test".to_string()];
        let (mut t, _) = MailTransaction::start(&facts(&rcpts), &Capabilities::default(), false);
        assert_eq!(t.lost("reset"), None, "before the data: try the next host");
        t.reply(&wire("250 Ok\r\n"));
        t.reply(&wire("250 Ok\r\n"));
        assert_eq!(t.reply(&wire("354 go\r\n")), Step::SendContent);
        let o = t.lost("timed out").unwrap();
        assert_eq!(
            words(&o),
            ["deferred 451 4.4.2 no reply after the end of the data: timed out"]
        );
    }

    #[test]
    fn a_peers_long_reply_is_kept_to_one_short_line() {
        let long: String = (0..1000)
            .map(|i| format!("450-4.2.0 line {i}\r\n"))
            .collect();
        let r = wire(&format!("{long}450 4.2.0 last\r\n"));
        let s = said(&r);
        assert!(s.to_string().len() <= 300, "{}", s.to_string().len());
        assert_eq!((s.code, s.enhanced), (Some(450), Enhanced(4, 2, 0)));
    }

    #[test]
    fn what_the_server_announced_refuses_a_message_before_anything_is_sent() {
        let rcpts = ["x@d.test".to_string()];
        let caps = Capabilities {
            size: Some(50),
            ..Default::default()
        };
        let (_, step) = MailTransaction::start(&facts(&rcpts), &caps, false);
        let Step::Done(o) = step else { panic!() };
        assert!(words(&o)[0].starts_with("failed 552 5.3.4 message size 100"));
        let mut f = facts(&rcpts);
        f.smtputf8 = true;
        f.needs_smtputf8 = true;
        let (_, step) = MailTransaction::start(&f, &Capabilities::default(), false);
        assert_eq!(
            step,
            Step::Done(vec![Outcome::Failed(Status::new(
                553,
                Enhanced(5, 6, 7),
                "remote server does not support SMTPUTF8"
            ))])
        );
    }

    fn encode_all(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut e = DataEncoder::default();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            e.encode(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn lines_over_998_octets_are_broken_with_crlf_and_a_space() {
        let mut input = b"Subject: long\r\n\r\n".to_vec();
        input.extend(vec![b'x'; 2500]);
        input.extend_from_slice(b"\r\n");
        for chunk in [7, 1200, 4096] {
            let text = String::from_utf8(encode_all(&input, chunk)).unwrap();
            assert!(
                text.split("\r\n").all(|l| l.len() <= 998),
                "a line over the limit"
            );
            let want = format!(
                "\r\n{}\r\n {}\r\n {}\r\n.\r\n",
                "x".repeat(998),
                "x".repeat(997),
                "x".repeat(505)
            );
            assert!(text.ends_with(&want), "chunk {chunk}");
        }
    }

    #[test]
    fn leading_dots_are_doubled_and_the_end_is_added() {
        assert_eq!(
            encode_all(b"a\r\n.b\r\n..\r\n", 100),
            b"a\r\n..b\r\n...\r\n.\r\n"
        );
        assert_eq!(encode_all(b".", 1), b"..\r\n.\r\n");
        assert_eq!(encode_all(b"", 1), b".\r\n");
    }

    #[test]
    fn bare_cr_and_lf_never_leave_satchel() {
        for chunk in 1..6 {
            let out = encode_all(b"a\nb\rc\r\n\n.\rd", chunk);
            assert_eq!(out, b"a\r\nb\r\nc\r\n\r\n..\r\nd\r\n.\r\n", "chunk {chunk}");
            // Every CR is followed by LF and every LF preceded by CR.
            for (i, &b) in out.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(out[i + 1], b'\n');
                }
                if b == b'\n' {
                    assert_eq!(out[i - 1], b'\r');
                }
            }
        }
    }

    #[test]
    fn multi_line_replies_are_assembled() {
        let mut b = ReplyBuilder::default();
        assert_eq!(b.push("250-mx.example").unwrap(), None);
        assert_eq!(b.push("250-PIPELINING").unwrap(), None);
        assert_eq!(b.push("250-SIZE 1000").unwrap(), None);
        let r = b.push("250 8BITMIME").unwrap().unwrap();
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.pipelining && caps.eight_bit_mime && !caps.smtputf8);
        assert_eq!(caps.size, Some(1000));
        assert!(b.push("garbage").is_err());
        let mut b = ReplyBuilder::default();
        b.push("250-a").unwrap();
        assert!(b.push("550 b").is_err());
    }

    #[test]
    fn enhanced_codes_are_split_off() {
        let mut b = ReplyBuilder::default();
        let r = b.push("550 5.1.1 <x@y>: User unknown").unwrap().unwrap();
        assert_eq!(r.one_line(), "550 5.1.1 <x@y>: User unknown");
        assert_eq!(r.enhanced, Some(super::super::reply::Enhanced(5, 1, 1)));
    }

    #[test]
    fn mail_parameters_follow_the_capabilities() {
        let caps = Capabilities {
            esmtp: true,
            size: Some(0),
            eight_bit_mime: true,
            ..Default::default()
        };
        assert_eq!(
            mail_command("<a@b>", 10, true, true, &caps),
            "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME"
        );
        assert_eq!(
            mail_command("<>", 10, true, false, &Capabilities::default()),
            "MAIL FROM:<>"
        );
    }
}
