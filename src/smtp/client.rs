//! The pure parts of the outbound SMTP dialogue: assembling multi-line
//! replies, reading an EHLO response into capabilities, building MAIL
//! parameters, and the DATA encoder (dot-stuffing, RFC 5321 §4.5.2, with
//! every line end forced to CRLF so no bare CR or LF ever leaves satchel).
//! The socket loop that uses them is `relay`.

use super::reply::{parse_reply_line, split_enhanced, Reply, ReplyLine};

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
/// if needed and the terminating `.` line.
#[derive(Debug)]
pub struct DataEncoder {
    at_bol: bool,
    pending_cr: bool,
    /// Octets sent on the current line.
    col: usize,
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
        }
    }
}

impl DataEncoder {
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
                    if self.at_bol && c == b'.' {
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
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
