//! A delivery status as a value: the SMTP reply code (when there was a
//! reply, ours or a peer's), the RFC 3463 enhanced status code (as said,
//! or the one the reply's class implies), and the text. Parsed once where
//! text comes in (a peer's reply, a queue file) and carried typed from
//! there: recipient states in the envelope, relay outcomes, DSNs and logs
//! read its fields, never the text. Pure: no I/O.

use std::fmt;

use crate::smtp::reply::{split_enhanced, Enhanced, Reply};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The reply code; `None` for a status no reply carried (an expiry).
    pub code: Option<u16>,
    /// The enhanced status code (RFC 3463).
    pub enhanced: Enhanced,
    /// The words after the codes.
    pub text: String,
    /// The enhanced code was part of what was said (and is shown).
    said_enhanced: bool,
}

impl Status {
    /// A reply of ours: `451 4.3.0 text`.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Status {
        Status {
            code: Some(code),
            enhanced,
            text: text.into(),
            said_enhanced: true,
        }
    }

    /// A status without a reply code: `4.4.7 text`.
    pub fn bare(enhanced: Enhanced, text: impl Into<String>) -> Status {
        Status {
            code: None,
            enhanced,
            text: text.into(),
            said_enhanced: true,
        }
    }

    /// A peer's reply (its lines joined by spaces, as one log line).
    pub fn from_reply(r: &Reply) -> Status {
        Status::parse(&r.one_line(), class_of(r.code))
    }

    /// Text as written by `Display` (a queue file) or said by a peer:
    /// `[code] [enhanced] text`. What is missing is implied: the enhanced
    /// code by the reply code's class, or `class.0.0` when there is
    /// neither (`class` is the state's: 2, 4 or 5).
    pub fn parse(s: &str, class: u8) -> Status {
        let (code, rest) = match s.split_once(' ').unwrap_or((s, "")) {
            (c, rest) if is_code(c) => (c.parse::<u16>().ok(), rest),
            _ => (None, s),
        };
        let class = code.map_or(class, class_of);
        match split_enhanced(rest) {
            (Some(e), text) => Status {
                code,
                enhanced: e,
                text: text.to_string(),
                said_enhanced: true,
            },
            (None, text) => Status {
                code,
                enhanced: Enhanced(class, 0, 0),
                text: text.to_string(),
                said_enhanced: false,
            },
        }
    }

    /// A permanent failure (class 5): no point in trying again.
    pub fn is_permanent(&self) -> bool {
        self.enhanced.0 == 5
    }

    /// A temporary failure (class 4).
    pub fn is_transient(&self) -> bool {
        self.enhanced.0 == 4
    }

    /// The same status with `prefix` before its text.
    pub fn prefixed(mut self, prefix: &str) -> Status {
        self.text = format!("{prefix}{}", self.text);
        self
    }
}

fn is_code(w: &str) -> bool {
    w.len() == 3
        && w.bytes().all(|b| b.is_ascii_digit())
        && (b'2'..=b'5').contains(&w.as_bytes()[0])
}

/// The class (2, 4, 5) of a reply code; 4 for anything odd.
fn class_of(code: u16) -> u8 {
    match code / 100 {
        2 => 2,
        5 => 5,
        _ => 4,
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(c) = self.code {
            write!(f, "{c}")?;
            sep = " ";
        }
        if self.said_enhanced {
            write!(f, "{sep}{}", self.enhanced)?;
            sep = " ";
        }
        if self.text.is_empty() {
            return Ok(());
        }
        write!(f, "{sep}{}", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_parsed_is_written_back_as_it_was() {
        for s in [
            "451 4.3.0 try again later",
            "550 User unknown",
            "4.4.7 delivery time expired; last error: 451 4.3.0 x",
            "250",
            "no result",
        ] {
            assert_eq!(Status::parse(s, 4).to_string(), s);
        }
    }

    #[test]
    fn the_enhanced_code_is_read_or_implied() {
        let s = Status::parse("550 5.1.1 <x@y>: User unknown", 4);
        assert_eq!((s.code, s.enhanced), (Some(550), Enhanced(5, 1, 1)));
        assert_eq!(s.text, "<x@y>: User unknown");
        assert!(s.is_permanent());
        let s = Status::parse("550 User unknown", 4);
        assert_eq!(s.enhanced, Enhanced(5, 0, 0));
        let s = Status::parse("451 try later", 5);
        assert_eq!(s.enhanced, Enhanced(4, 0, 0), "the code's class wins");
        let s = Status::parse("4.4.7 expired", 5);
        assert_eq!((s.code, s.enhanced), (None, Enhanced(4, 4, 7)));
        assert!(s.is_transient());
        let s = Status::parse("gone", 5);
        assert_eq!((s.code, s.enhanced), (None, Enhanced(5, 0, 0)));
    }

    #[test]
    fn statuses_of_ours_print_as_replies() {
        let s = Status::new(451, Enhanced(4, 3, 0), "cannot deliver");
        assert_eq!(s.to_string(), "451 4.3.0 cannot deliver");
        let s = Status::bare(Enhanced(4, 4, 7), "expired").prefixed("delivery time ");
        assert_eq!(s.to_string(), "4.4.7 delivery time expired");
    }
}
