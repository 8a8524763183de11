//! Delivery status notification requests (RFC 3461): what a sender asks
//! for with `RET=` and `ENVID=` on MAIL and `NOTIFY=` and `ORCPT=` on
//! RCPT, their xtext encoding (§4), and the `utf-8` address type of
//! RFC 6533. Pure values: the session parses them, the envelope keeps
//! them, delivery decides from them which notices are owed, and the SMTP
//! client passes them on.

/// RFC 3461 §4.1: when the sender wants to hear about a recipient.
/// `Notify::default()` is "not said" (the MTA's defaults: failures and
/// delays, never success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Notify(u8);

const SUCCESS: u8 = 1;
const FAILURE: u8 = 2;
const DELAY: u8 = 4;
const NEVER: u8 = 8;

impl Notify {
    /// `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (case
    /// does not matter; a keyword twice is harmless).
    pub fn parse(v: &str) -> Option<Notify> {
        let mut bits = 0;
        for word in v.split(',') {
            bits |= match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => SUCCESS,
                "FAILURE" => FAILURE,
                "DELAY" => DELAY,
                "NEVER" => NEVER,
                _ => return None,
            };
        }
        // §4.1: NEVER stands alone.
        (bits != 0 && (bits == NEVER || bits & NEVER == 0)).then_some(Notify(bits))
    }

    pub fn is_given(self) -> bool {
        self.0 != 0
    }

    pub fn success(self) -> bool {
        self.0 & SUCCESS != 0
    }

    /// A bounce is owed when the recipient fails (the default).
    pub fn failure(self) -> bool {
        !self.is_given() || self.0 & FAILURE != 0
    }

    /// A delay warning may be sent (the default).
    pub fn delay(self) -> bool {
        !self.is_given() || self.0 & DELAY != 0
    }

    /// Without SUCCESS (for the members of an expanded list, §6.2.7.3).
    pub fn without_success(self) -> Notify {
        match self.0 & !SUCCESS {
            0 => Notify(NEVER),
            b => Notify(b),
        }
    }

    /// The parameter's value; `None` when not given.
    pub fn value(self) -> Option<String> {
        if !self.is_given() {
            return None;
        }
        if self.0 == NEVER {
            return Some("NEVER".into());
        }
        let words = [(SUCCESS, "SUCCESS"), (FAILURE, "FAILURE"), (DELAY, "DELAY")];
        let on: Vec<&str> = words
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, w)| *w)
            .collect();
        Some(on.join(","))
    }
}

/// RFC 3461 §4.3: how much of the message a failure notice returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn parse(v: &str) -> Option<Ret> {
        match v.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }

    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// One recipient's request: `NOTIFY=` and `ORCPT=` as they came.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct RcptDsn {
    pub notify: Notify,
    /// `addr-type;xtext` as received (validated), or made by this host
    /// for the members of an alias; `None` when nobody said.
    pub orcpt: Option<String>,
}

/// RFC 3461 §4.4: ENVID is at most 100 characters.
pub const MAX_ENVID: usize = 100;

/// RFC 3461 §4.2: an ORCPT parameter is at most 500 characters.
pub const MAX_ORCPT: usize = 500;

/// RFC 3461 §4: `xtext = *( xchar / hexchar )`, xchar any of "!" to "~"
/// but "+" and "=", hexchar "+" and two upper-case hex digits.
pub fn is_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                if !(upper_hex(b.get(i + 1)) && upper_hex(b.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

fn upper_hex(c: Option<&u8>) -> bool {
    c.is_some_and(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'))
}

/// `text` as xtext: what is not an xchar becomes `+HH`.
pub fn xtext(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'+' | b'=' => out.push_str(&format!("+{b:02X}")),
            b'!'..=b'~' => out.push(b as char),
            _ => out.push_str(&format!("+{b:02X}")),
        }
    }
    out
}

/// RFC 3461 §4.2 (and RFC 6533 §3 for `utf-8`): an ORCPT value,
/// `addr-type ";" xtext`. A `utf-8` address may also be
/// utf-8-addr-xtext or, in an SMTPUTF8 session, utf-8-addr-unitext: its
/// `\x{HEX}` escapes must be well formed and name a character.
pub fn valid_orcpt(v: &str) -> bool {
    let Some((kind, addr)) = v.split_once(';') else {
        return false;
    };
    let atom = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !atom(kind) || addr.is_empty() {
        return false;
    }
    if !kind.eq_ignore_ascii_case("utf-8") {
        return is_xtext(addr);
    }
    decode_utf8_addr(addr).is_some()
}

/// The address an ORCPT value carries, decoded for a notice's
/// `Original-Recipient:` field (RFC 3464 §2.3.1): `rfc822;a@b.example`.
pub fn orcpt_field(v: &str) -> String {
    let (kind, addr) = v.split_once(';').unwrap_or(("rfc822", v));
    let decoded = match kind.eq_ignore_ascii_case("utf-8") {
        true => decode_utf8_addr(addr),
        false => decode_xtext(addr),
    };
    format!("{kind};{}", decoded.unwrap_or_else(|| addr.to_string()))
}

/// An ORCPT value for `addr` (a plain address of ours): `rfc822` for
/// ASCII, `utf-8` with `\x{HEX}` escapes otherwise (RFC 6533 §3).
pub fn orcpt_for(addr: &str) -> String {
    if addr.is_ascii() {
        return format!("rfc822;{}", xtext(addr));
    }
    let mut out = String::from("utf-8;");
    for c in addr.chars() {
        match c {
            '!'..='~' if c != '+' && c != '=' && c != '\\' => out.push(c),
            _ => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
        }
    }
    out
}

/// An ORCPT value fit for a hop without SMTPUTF8: a `utf-8` address's
/// raw characters as `\x{HEX}` (unitext to xtext, RFC 6533 §3).
pub fn orcpt_ascii(v: &str) -> String {
    if v.is_ascii() {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 16);
    for c in v.chars() {
        match c.is_ascii() {
            true => out.push(c),
            false => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
        }
    }
    out
}

/// xtext decoded; `None` when the escapes are bad or the result is not UTF-8.
pub fn decode_xtext(v: &str) -> Option<String> {
    if !is_xtext(v) {
        return None;
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(u8::from_str_radix(v.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 6533 §3: `\x{HEX}` (1 to 6 digits, a Unicode scalar value) for a
/// character, other characters as they are (none below "!", no "+" or
/// "=" unescaped).
fn decode_utf8_addr(v: &str) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            let body = rest.strip_prefix("\\x{")?;
            let end = body.find('}')?;
            let hex = &body[..end];
            if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            rest = &body[end + 1..];
            continue;
        }
        if c.is_control() || c == ' ' || c == '+' || c == '=' {
            return None;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    (!out.is_empty()).then_some(out)
}

/// The parameters that go on with a message to a hop that offers DSN:
/// ` RET=… ENVID=…` for MAIL, ` NOTIFY=… ORCPT=…` for each of the
/// recipients `idx` (RFC 3461 §5.2: as received).
pub fn params(env: &crate::envelope::Envelope, idx: &[usize]) -> (String, Vec<String>) {
    let mut mail = String::new();
    if let Some(ret) = env.ret {
        mail.push_str(&format!(" RET={}", ret.keyword()));
    }
    if let Some(envid) = &env.envid {
        mail.push_str(&format!(" ENVID={envid}"));
    }
    let rcpts = idx
        .iter()
        .map(|&i| {
            let d = &env.rcpts[i].dsn;
            let mut p = String::new();
            if let Some(n) = d.notify.value() {
                p.push_str(&format!(" NOTIFY={n}"));
            }
            if let Some(o) = &d.orcpt {
                p.push_str(&format!(" ORCPT={}", orcpt_ascii(o)));
            }
            p
        })
        .collect();
    (mail, rcpts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_takes_never_alone_or_a_list() {
        let n = Notify::parse("success,Delay").unwrap();
        assert!(n.success() && n.delay() && !n.failure());
        assert_eq!(n.value().as_deref(), Some("SUCCESS,DELAY"));
        let never = Notify::parse("NEVER").unwrap();
        assert!(!never.success() && !never.failure() && !never.delay());
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,", "ALWAYS", "SUCCESS;FAILURE"] {
            assert_eq!(Notify::parse(bad), None, "{bad}");
        }
        let default = Notify::default();
        assert!(default.failure() && default.delay() && !default.success());
        assert_eq!(default.value(), None);
        assert_eq!(
            Notify::parse("SUCCESS").unwrap().without_success(),
            Notify::parse("NEVER").unwrap()
        );
    }

    #[test]
    fn xtext_round_trips_and_refuses_bad_escapes() {
        assert_eq!(xtext("a+b=c d@x"), "a+2Bb+3Dc+20d@x");
        assert_eq!(
            decode_xtext("a+2Bb+3Dc+20d@x").as_deref(),
            Some("a+b=c d@x")
        );
        for bad in ["", "a+2", "a+2b", "a+G0", "a=b", "a b", "+"] {
            assert_eq!(decode_xtext(bad), None, "{bad}");
        }
        // Escapes that decode to bytes that are not UTF-8.
        assert_eq!(decode_xtext("+FF"), None);
    }

    #[test]
    fn orcpt_values_of_both_types() {
        assert!(valid_orcpt("rfc822;bob+40example.org"));
        assert_eq!(
            orcpt_field("rfc822;bob+40example.org"),
            "rfc822;bob@example.org"
        );
        assert!(valid_orcpt("utf-8;j\\x{F6}rg@example.org"));
        assert!(valid_orcpt("utf-8;jörg@example.org"));
        assert_eq!(
            orcpt_field("utf-8;j\\x{F6}rg@example.org"),
            "utf-8;jörg@example.org"
        );
        for bad in [
            "bob@example.org",
            ";bob",
            "rfc822;",
            "rfc822;a+4",
            "rfc 822;a",
            "utf-8;a\\x{D800}b",
            "utf-8;a\\x{}b",
            "utf-8;a\\x{1234567}b",
            "utf-8;a\\xF6b",
            "utf-8;a b",
        ] {
            assert!(!valid_orcpt(bad), "{bad}");
        }
        assert_eq!(orcpt_for("a+b@x.test"), "rfc822;a+2Bb@x.test");
        assert_eq!(orcpt_for("jörg@x.test"), "utf-8;j\\x{F6}rg@x.test");
        assert!(valid_orcpt(&orcpt_for("jörg@x.test")));
        assert_eq!(orcpt_ascii("utf-8;jörg@x.test"), "utf-8;j\\x{F6}rg@x.test");
    }
}
