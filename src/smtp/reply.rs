//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034,
//! RFC 3463): building, formatting for the wire, and parsing what a peer
//! sent (the client half reads replies too). No I/O.

use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One reply: a three-digit code, an optional enhanced code, and one or
/// more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (greeting, HELO/EHLO).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply on one line, for logs: `550 5.1.1 User unknown`.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        for l in &self.lines {
            s.push(' ');
            s.push_str(l);
        }
        s
    }

    /// Appends the wire form (every line ending in CRLF) to `out`.
    /// Text is sanitized: control characters never reach the peer.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(if i + 1 < n { b'-' } else { b' ' });
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(
                text.bytes()
                    .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// What a reply line from a peer turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyLine<'a> {
    /// `250-text`: more lines follow.
    More { code: u16, text: &'a str },
    /// `250 text`: the last line.
    Last { code: u16, text: &'a str },
}

/// Parses one reply line (without CRLF) as RFC 5321 §4.2 writes it.
pub fn parse_reply_line(line: &str) -> Option<ReplyLine<'_>> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return None;
    }
    let code: u16 = line[..3].parse().ok()?;
    match b.get(3) {
        None => Some(ReplyLine::Last { code, text: "" }),
        Some(b' ') => Some(ReplyLine::Last {
            code,
            text: &line[4..],
        }),
        Some(b'-') => Some(ReplyLine::More {
            code,
            text: &line[4..],
        }),
        _ => None,
    }
}

/// Splits an enhanced status code off the front of reply text, if present.
pub fn split_enhanced(text: &str) -> (Option<Enhanced>, &str) {
    let (head, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let mut parts = head.split('.');
    let parsed = (|| {
        let c: u8 = parts.next()?.parse().ok()?;
        let s: u16 = parts.next()?.parse().ok()?;
        let d: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(2..=5).contains(&c) {
            return None;
        }
        Some(Enhanced(c, s, d))
    })();
    match parsed {
        Some(e) => (Some(e), rest),
        None => (None, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_reply_formats_with_enhanced_code() {
        let r = Reply::new(250, Enhanced(2, 1, 0), "Ok");
        assert_eq!(r.to_wire(), b"250 2.1.0 Ok\r\n");
    }

    #[test]
    fn multi_line_reply_uses_hyphens_until_the_last_line() {
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.to_wire(), b"250-a\r\n250 b\r\n");
    }

    #[test]
    fn control_characters_never_reach_the_wire() {
        let r = Reply::plain(501, "bad\r\nname\0");
        assert_eq!(r.to_wire(), b"501 bad??name?\r\n");
    }

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_reply_line("250-SIZE 100"),
            Some(ReplyLine::More {
                code: 250,
                text: "SIZE 100"
            })
        );
        assert_eq!(
            parse_reply_line("221 bye"),
            Some(ReplyLine::Last {
                code: 221,
                text: "bye"
            })
        );
        assert_eq!(
            parse_reply_line("354"),
            Some(ReplyLine::Last {
                code: 354,
                text: ""
            })
        );
        assert_eq!(parse_reply_line("hello"), None);
        assert_eq!(parse_reply_line("999 x"), None);
    }

    #[test]
    fn enhanced_codes_split() {
        assert_eq!(
            split_enhanced("5.1.1 User unknown"),
            (Some(Enhanced(5, 1, 1)), "User unknown")
        );
        assert_eq!(split_enhanced("Ok"), (None, "Ok"));
    }
}
