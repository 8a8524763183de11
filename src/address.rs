//! Mail addresses as RFC 5321 §4.1.2 defines them: `Mailbox`, `Domain`,
//! `ReversePath` (which may be the null path `<>`) and `ForwardPath`.
//!
//! Parsing is strict about syntax and about the §4.5.3.1 size limits, and
//! lenient only where Postfix and sendmail are: a space after the colon of
//! `MAIL FROM:` is handled by the command parser, and a path without angle
//! brackets is accepted. A source route (`<@a,@b:user@c>`) is parsed and then
//! dropped (§3.6.1, Appendix C). UTF-8 is accepted in local parts and domains
//! (RFC 6531); whether the transaction may carry it is the session's call.
//!
//! This module never does I/O.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 §4.5.3.1.1: maximum total length of a user name or other local-part.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: maximum total length of a domain name or number.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: maximum total length of a reverse-path or forward-path,
/// including the punctuation and element separators.
pub const MAX_PATH: usize = 256;

/// Why an address was refused. The session maps each kind to a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Not a path at all; the text says what is wrong.
    Syntax(&'static str),
    /// §4.5.3.1.3 exceeded (reply 501 "Path too long").
    PathTooLong,
    /// §4.5.3.1.1 exceeded (reply 553).
    LocalPartTooLong,
    /// §4.5.3.1.2 exceeded (reply 553).
    DomainTooLong,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Syntax(why) => f.write_str(why),
            AddressError::PathTooLong => write!(f, "path too long (max {MAX_PATH} octets)"),
            AddressError::LocalPartTooLong => {
                write!(f, "local part too long (max {MAX_LOCAL_PART} octets)")
            }
            AddressError::DomainTooLong => write!(f, "domain too long (max {MAX_DOMAIN} octets)"),
        }
    }
}

/// The part right of the `@`: a host name or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name, kept as the client wrote it; compare with `eq_ignore_case`.
    Name(String),
    /// `[192.0.2.1]`
    V4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`
    V6(Ipv6Addr),
}

impl Domain {
    /// Case-insensitive comparison against a configured domain name (RFC 5321 §2.4).
    pub fn is_name(&self, name: &str) -> bool {
        match self {
            Domain::Name(n) => n.eq_ignore_ascii_case(name),
            _ => false,
        }
    }

    /// The name in lower case (ASCII only; U-labels are compared as written).
    pub fn to_lowercase(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::V4(a) => write!(f, "[{a}]"),
            Domain::V6(a) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// `local-part@domain`. The local part is stored as written on the wire,
/// including quotes when it was a quoted string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// The local part with quoting removed (`"a b"` -> `a b`).
    pub fn local_unquoted(&self) -> String {
        unquote(&self.local)
    }

    /// True when the address uses anything beyond ASCII (needs SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.to_string().is_ascii()
    }

    /// Parses `local@domain` (no angle brackets), applying the size limits.
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        let mut p = Parser {
            s: s.as_bytes(),
            i: 0,
        };
        let mb = p.mailbox()?;
        if p.i != s.len() {
            return Err(AddressError::Syntax("unexpected characters after address"));
        }
        Ok(mb)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of `MAIL FROM:`: a mailbox or the null path `<>` used by
/// bounces (RFC 5321 §4.5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    pub fn parse(s: &str) -> Result<ReversePath, AddressError> {
        if s == "<>" {
            return Ok(ReversePath::Null);
        }
        parse_path(s).map(ReversePath::Mailbox)
    }

    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }

    pub fn is_ascii(&self) -> bool {
        match self {
            ReversePath::Null => true,
            ReversePath::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ReversePath {
    /// Formats with angle brackets, as on the wire and in envelopes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of `RCPT TO:`: a mailbox, or the bare `<postmaster>` that
/// every SMTP server must accept (RFC 5321 §4.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Mailbox),
}

impl ForwardPath {
    pub fn parse(s: &str) -> Result<ForwardPath, AddressError> {
        if s.eq_ignore_ascii_case("<postmaster>") {
            return Ok(ForwardPath::Postmaster);
        }
        parse_path(s).map(ForwardPath::Mailbox)
    }

    pub fn is_ascii(&self) -> bool {
        match self {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => m.is_ascii(),
        }
    }

    /// The address without angle brackets (`postmaster` for
    /// `<postmaster>`), for logs, DSNs and the SMTP client.
    pub fn bare(&self) -> String {
        match self {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Mailbox(m) => m.to_string(),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Removes the quoting of a quoted-string local part (RFC 5321 §4.1.2:
/// `quoted-pairSMTP = %d92 %d32-126`).
/// A HELO/EHLO argument that is a host name (RFC 1123 §2.1 labels: letters,
/// digits, hyphens inside; `_` too, as Postfix allows), an address
/// literal (RFC 5321 §4.1.3) or a bare IP address.
pub fn valid_helo(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                inner[5..].parse::<Ipv6Addr>().is_ok()
            }
            _ => inner.parse::<Ipv4Addr>().is_ok(),
        };
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let host = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.len() <= MAX_DOMAIN && host.split('.').all(label_ok)
}

/// A name in fully-qualified form (two labels at least) or an address
/// literal: what Postfix's reject_non_fqdn_* settings ask of HELO names
/// and address domains.
pub fn fqdn_or_literal(name: &str) -> bool {
    if name.starts_with('[') {
        return true;
    }
    let host = name.strip_suffix('.').unwrap_or(name);
    host.split('.').count() >= 2 && host.split('.').all(|l| !l.is_empty())
}

pub fn unquote(local: &str) -> String {
    let b = local.as_bytes();
    if b.len() < 2 || b[0] != b'"' || b[b.len() - 1] != b'"' {
        return local.to_string();
    }
    let inner = &local[1..local.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `Path = "<" [ A-d-l ":" ] Mailbox ">"`, also accepting the bare
/// `Mailbox` form without brackets, as Postfix does by default.
fn parse_path(s: &str) -> Result<Mailbox, AddressError> {
    // The limit counts the angle brackets, also when the client left them out.
    let bracketed_len = if s.starts_with('<') {
        s.len()
    } else {
        s.len() + 2
    };
    if bracketed_len > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    let inner = if let Some(rest) = s.strip_prefix('<') {
        rest.strip_suffix('>')
            .ok_or(AddressError::Syntax("missing closing '>'"))?
    } else {
        s
    };
    let mut p = Parser {
        s: inner.as_bytes(),
        i: 0,
    };
    if p.peek() == Some(b'@') {
        p.source_route()?;
    }
    let mb = p.mailbox()?;
    if p.i != inner.len() {
        return Err(AddressError::Syntax("unexpected characters after address"));
    }
    Ok(mb)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// `A-d-l = At-domain *( "," At-domain )`, followed by ":"; the route is
    /// ignored (RFC 5321 §3.6.1 and Appendix C).
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            if self.peek() != Some(b'@') {
                return Err(AddressError::Syntax("bad source route"));
            }
            self.i += 1;
            self.domain()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b':') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(AddressError::Syntax("bad source route")),
            }
        }
    }

    fn mailbox(&mut self) -> Result<Mailbox, AddressError> {
        let start = self.i;
        if self.peek() == Some(b'"') {
            self.quoted_string()?;
        } else {
            self.dot_string()?;
        }
        let local = &self.s[start..self.i];
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        if self.peek() != Some(b'@') {
            return Err(AddressError::Syntax("missing '@domain'"));
        }
        self.i += 1;
        let domain = self.domain()?;
        let local = std::str::from_utf8(local)
            .map_err(|_| AddressError::Syntax("invalid UTF-8"))?
            .to_string();
        Ok(Mailbox { local, domain })
    }

    /// `Dot-string = Atom *("." Atom)`
    fn dot_string(&mut self) -> Result<(), AddressError> {
        loop {
            let start = self.i;
            while let Some(c) = self.peek() {
                if is_atext(c) {
                    self.i += 1;
                } else {
                    break;
                }
            }
            if self.i == start {
                return Err(AddressError::Syntax("bad local part"));
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
            } else {
                return Ok(());
            }
        }
    }

    /// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`
    fn quoted_string(&mut self) -> Result<(), AddressError> {
        self.i += 1;
        loop {
            match self.peek() {
                None => return Err(AddressError::Syntax("unterminated quoted string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    // quoted-pairSMTP = %d92 %d32-126
                    match self.s.get(self.i + 1) {
                        Some(&c) if (32..=126).contains(&c) => self.i += 2,
                        _ => return Err(AddressError::Syntax("bad quoted pair")),
                    }
                }
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531)
                Some(c) if (32..=126).contains(&c) || c >= 0x80 => self.i += 1,
                Some(_) => return Err(AddressError::Syntax("control character in address")),
            }
        }
    }

    /// `Domain / address-literal`
    fn domain(&mut self) -> Result<Domain, AddressError> {
        let start = self.i;
        if self.peek() == Some(b'[') {
            let close = self.s[self.i..]
                .iter()
                .position(|&c| c == b']')
                .ok_or(AddressError::Syntax("unterminated address literal"))?;
            let lit = &self.s[self.i + 1..self.i + close];
            self.i += close + 1;
            let lit = std::str::from_utf8(lit)
                .map_err(|_| AddressError::Syntax("bad address literal"))?;
            return parse_address_literal(lit);
        }
        // sub-domain = Let-dig [Ldh-str]; UTF-8 allowed for U-labels (RFC 6531).
        loop {
            let label = self.i;
            while let Some(c) = self.peek() {
                if c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80 {
                    self.i += 1;
                } else {
                    break;
                }
            }
            let l = &self.s[label..self.i];
            if l.is_empty() || l[0] == b'-' || l[l.len() - 1] == b'-' {
                return Err(AddressError::Syntax("bad domain name"));
            }
            // RFC 1035 §2.3.4: a label is at most 63 octets.
            if l.len() > 63 {
                return Err(AddressError::Syntax("domain label longer than 63 octets"));
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
            } else {
                break;
            }
        }
        let name = &self.s[start..self.i];
        if name.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        let name = std::str::from_utf8(name).map_err(|_| AddressError::Syntax("invalid UTF-8"))?;
        Ok(Domain::Name(name.to_string()))
    }
}

/// RFC 5321 §4.1.3 address literals. General-address-literals other than
/// IPv6 are refused: no standardized tag exists for them.
fn parse_address_literal(lit: &str) -> Result<Domain, AddressError> {
    if let Some(v6) = lit
        .strip_prefix("IPv6:")
        .or_else(|| lit.strip_prefix("ipv6:"))
        .or_else(|| lit.strip_prefix("IPV6:"))
    {
        return v6
            .parse::<Ipv6Addr>()
            .map(Domain::V6)
            .map_err(|_| AddressError::Syntax("bad IPv6 address literal"));
    }
    // Snum = 1*3DIGIT; Ipv4Addr's parser is strict (no leading zeros, 4 parts).
    lit.parse::<Ipv4Addr>()
        .map(Domain::V4)
        .map_err(|_| AddressError::Syntax("bad address literal"))
}

/// `atext` of RFC 5322 §3.2.3, plus UTF-8 octets (RFC 6531 §3.3).
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helo_names_and_fully_qualified_forms() {
        for ok in [
            "mail.example.test",
            "host_1.test.",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "192.0.2.1",
            "localhost",
        ] {
            assert!(valid_helo(ok), "{ok}");
        }
        for bad in [
            "",
            "bad!name",
            "-lead.test",
            "trail-.test",
            "a..b",
            "[192.0.2.300]",
            "[IPv6:nope]",
            "x y",
        ] {
            assert!(!valid_helo(bad), "{bad}");
        }
        for fq in ["mail.example.test", "example.test.", "[192.0.2.1]"] {
            assert!(fqdn_or_literal(fq), "{fq}");
        }
        for not in ["localhost", "localhost.", ".test", "a..b", ""] {
            assert!(!fqdn_or_literal(not), "{not}");
        }
    }

    fn mb(s: &str) -> Mailbox {
        match ForwardPath::parse(s) {
            Ok(ForwardPath::Mailbox(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn plain_path_parses() {
        let m = mb("<user@example.com>");
        assert_eq!(m.local, "user");
        assert!(m.domain.is_name("EXAMPLE.com"));
    }

    #[test]
    fn null_reverse_path_is_accepted() {
        assert_eq!(ReversePath::parse("<>"), Ok(ReversePath::Null));
        assert_eq!(ReversePath::Null.to_string(), "<>");
    }

    #[test]
    fn postmaster_without_domain_is_a_forward_path() {
        assert_eq!(
            ForwardPath::parse("<Postmaster>"),
            Ok(ForwardPath::Postmaster)
        );
        assert!(ReversePath::parse("<postmaster>").is_err());
    }

    #[test]
    fn source_route_is_accepted_and_ignored() {
        let m = mb("<@a.example,@b.example:user@c.example>");
        assert_eq!(m.to_string(), "user@c.example");
        assert!(ForwardPath::parse("<@a.example:>").is_err());
        assert!(ForwardPath::parse("<@:user@c>").is_err());
    }

    #[test]
    fn quoted_local_part_keeps_quotes_and_unquotes() {
        let m = mb(r#"<"john \"q\" doe"@example.com>"#);
        assert_eq!(m.local, r#""john \"q\" doe""#);
        assert_eq!(m.local_unquoted(), r#"john "q" doe"#);
        assert!(ForwardPath::parse("<\"unterminated@example.com>").is_err());
    }

    #[test]
    fn address_literals_parse() {
        assert_eq!(
            mb("<a@[192.0.2.1]>").domain,
            Domain::V4("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            mb("<a@[IPv6:2001:db8::1]>").domain,
            Domain::V6("2001:db8::1".parse().unwrap())
        );
        assert!(ForwardPath::parse("<a@[300.1.1.1]>").is_err());
        assert!(ForwardPath::parse("<a@[tag:stuff]>").is_err());
    }

    #[test]
    fn bracketless_path_is_accepted() {
        assert_eq!(mb("user@example.com").to_string(), "user@example.com");
    }

    #[test]
    fn broken_addresses_are_refused() {
        for bad in [
            "<>",
            "<@>",
            "<user>",
            "<user@>",
            "<@example.com>",
            "<user@exa mple.com>",
            "<user@-bad.com>",
            "<user@bad-.com>",
            "<user@bad..com>",
            "<.user@x.com>",
            "<user.@x.com>",
            "<us..er@x.com>",
            "<user@x.com",
            "user@x.com>",
            "<a@b@c>",
            "<a\u{0}b@c>",
            "<a b@c>",
            "<user@x.com.>",
        ] {
            assert!(ForwardPath::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn limits_of_section_4_5_3_1_are_enforced() {
        let local64 = "a".repeat(64);
        assert!(ForwardPath::parse(&format!("<{local64}@x.com>")).is_ok());
        assert_eq!(
            ForwardPath::parse(&format!("<{local64}a@x.com>")),
            Err(AddressError::LocalPartTooLong)
        );
        let label = "b".repeat(63);
        let domain = format!("{label}.{label}.{label}.{}", "c".repeat(63)); // 255
        assert_eq!(domain.len(), 255);
        assert!(Mailbox::parse(&format!("a@{domain}")).is_ok());
        assert_eq!(
            Mailbox::parse(&format!("a@d.{domain}")),
            Err(AddressError::DomainTooLong)
        );
        let long = format!("<{}@{}>", "a".repeat(60), domain);
        assert_eq!(ForwardPath::parse(&long), Err(AddressError::PathTooLong));
    }

    /// Found by the address fuzzer: a bracketless path of 255 octets passed,
    /// but its bracketed form (257) did not; and labels had no 63 limit.
    #[test]
    fn bracketless_paths_count_their_brackets_and_labels_stop_at_63() {
        let domain = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        let local = "c".repeat(64);
        let bare = format!("{local}@{domain}.{}.x", "d".repeat(60));
        assert_eq!(bare.len(), 255);
        assert_eq!(ForwardPath::parse(&bare), Err(AddressError::PathTooLong));
        assert!(ForwardPath::parse(&format!("<x@{}.test>", "e".repeat(64))).is_err());
        assert!(ForwardPath::parse(&format!("<x@{}.test>", "e".repeat(63))).is_ok());
    }

    #[test]
    fn utf8_addresses_parse_and_are_flagged_non_ascii() {
        let m = mb("<grüße@bücher.example>");
        assert!(!m.is_ascii());
        assert!(mb("<a@b.example>").is_ascii());
    }
}
