//! One command line (CRLF already removed) -> a `Command`, or the reply that
//! explains why not. Verbs are case-insensitive (RFC 5321 §2.4). No I/O.

use super::reply::{Enhanced, Reply};
use crate::address::{AddressError, ForwardPath, ReversePath};
use crate::dsn::{is_xtext, Notify, RcptDsn, Ret};

/// RFC 1652 / RFC 6152 body types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// ESMTP parameters of `MAIL FROM` that satchel implements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// RFC 1870 declared size.
    pub size: Option<u64>,
    pub body: BodyType,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3461 §4.3, §4.4.
    pub ret: Option<Ret>,
    /// ENVID as received (xtext).
    pub envid: Option<String>,
    /// RFC 8689.
    pub requiretls: bool,
}

/// RFC 3030: one BDAT command, the size of the chunk that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub size: u64,
    pub last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(ReversePath, MailParams),
    Rcpt(ForwardPath, RcptDsn),
    Data,
    Bdat(Chunk),
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(String),
    /// RFC 3207; answered by the session according to its TLS seam.
    StartTls,
    /// RFC 4954; the argument line is kept for the AUTH seam.
    Auth(String),
}

/// Parses one command line.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    parse_qualifying(line, None)
}

/// `parse`, with a bare name in MAIL or RCPT (`<root>`) taken as
/// `root@origin` when `origin` is given (Postfix's append_at_myorigin, for
/// clients this host trusts; RFC 5321 wants a domain from everyone else).
pub fn parse_qualifying(line: &[u8], origin: Option<&str>) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line).map_err(|_| {
        Reply::new(
            500,
            Enhanced(5, 5, 2),
            "Syntax error: invalid UTF-8 in command",
        )
    })?;
    if line.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(Reply::new(
            500,
            Enhanced(5, 5, 2),
            "Syntax error: control character in command",
        ));
    }
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let arg_trimmed = arg.trim();
    let no_arg = |c: Command| {
        if arg_trimmed.is_empty() {
            Ok(c)
        } else {
            Err(Reply::new(
                501,
                Enhanced(5, 5, 4),
                format!("Syntax: {verb}"),
            ))
        }
    };
    match verb.as_str() {
        "HELO" | "EHLO" => {
            let name = arg_trimmed;
            if name.is_empty() || name.contains(' ') {
                return Err(Reply::new(
                    501,
                    Enhanced(5, 5, 4),
                    format!("Syntax: {verb} hostname"),
                ));
            }
            Ok(if verb == "HELO" {
                Command::Helo(name.into())
            } else {
                Command::Ehlo(name.into())
            })
        }
        "MAIL" => parse_mail(arg, origin),
        "RCPT" => parse_rcpt(arg, origin),
        "DATA" => no_arg(Command::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_arg(Command::Rset),
        "QUIT" => no_arg(Command::Quit),
        "STARTTLS" => no_arg(Command::StartTls),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help(arg_trimmed.into())),
        "VRFY" | "EXPN" if arg_trimmed.is_empty() => Err(Reply::new(
            501,
            Enhanced(5, 5, 4),
            format!("Syntax: {verb} address"),
        )),
        "VRFY" => Ok(Command::Vrfy(arg_trimmed.into())),
        "EXPN" => Ok(Command::Expn(arg_trimmed.into())),
        "AUTH" => Ok(Command::Auth(arg_trimmed.into())),
        _ => Err(Reply::new(
            500,
            Enhanced(5, 5, 1),
            "Error: command not recognized",
        )),
    }
}

/// `"MAIL FROM:" Reverse-path [SP Mail-parameters]` (RFC 5321 §4.1.1.2).
fn parse_mail(arg: &str, origin: Option<&str>) -> Result<Command, Reply> {
    let rest = strip_keyword(arg, "FROM:")
        .ok_or_else(|| Reply::new(501, Enhanced(5, 5, 4), "Syntax: MAIL FROM:<address>"))?;
    let (path, params) = split_path(rest);
    let qualified = qualify(path, origin);
    let path = qualified.as_deref().unwrap_or(path);
    let from =
        ReversePath::parse(path).map_err(|e| address_reply(e, Enhanced(5, 1, 7), "Sender"))?;
    let mut p = MailParams::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = match param.find('=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                // RFC 1870: size-value = 1*20DIGIT
                let n = v
                    .parse::<u64>()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| Reply::new(501, Enhanced(5, 5, 4), "Bad SIZE parameter"))?;
                p.size = Some(n);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                p.body = BodyType::EightBitMime
            }
            ("BODY", _) => return Err(Reply::new(501, Enhanced(5, 5, 4), "Bad BODY parameter")),
            ("SMTPUTF8", None) => p.smtputf8 = true,
            // RFC 4954 §5: a server that offers AUTH must accept AUTH= from
            // a client that relays mail it authenticated elsewhere; the
            // value is only a claim, and satchel does not pass it on.
            ("AUTH", Some(v)) if is_xtext(v) => {}
            ("AUTH", _) => return Err(Reply::new(501, Enhanced(5, 5, 4), "Bad AUTH parameter")),
            // RFC 3461 §4.3, §4.4: each at most once.
            ("RET", Some(v)) if p.ret.is_none() => {
                p.ret = Some(Ret::parse(v).ok_or_else(|| bad_param("RET"))?)
            }
            ("ENVID", Some(v)) if p.envid.is_none() => {
                if !is_xtext(v) || v.len() > crate::dsn::MAX_ENVID {
                    return Err(bad_param("ENVID"));
                }
                p.envid = Some(v.to_string());
            }
            ("RET" | "ENVID", _) => return Err(bad_param(key)),
            ("REQUIRETLS", None) => p.requiretls = true,
            _ => return Err(unsupported(key)),
        }
    }
    Ok(Command::Mail(from, p))
}

/// RFC 3030 §3: `"BDAT" SP chunk-size [SP "LAST"]`, chunk-size
/// `1*DIGIT` (at most 20: a u64).
fn parse_bdat(arg: &str) -> Result<Command, Reply> {
    let (size, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    let last = match rest {
        "" => false,
        r if r.eq_ignore_ascii_case("LAST") => true,
        _ => return Err(bdat_syntax()),
    };
    let digits = !size.is_empty() && size.len() <= 20 && size.bytes().all(|b| b.is_ascii_digit());
    let size = size
        .parse::<u64>()
        .ok()
        .filter(|_| digits)
        .ok_or_else(bdat_syntax)?;
    Ok(Command::Bdat(Chunk { size, last }))
}

fn bdat_syntax() -> Reply {
    Reply::new(501, Enhanced(5, 5, 4), "Syntax: BDAT size [LAST]")
}

/// 555 for a MAIL or RCPT parameter satchel does not know (RFC 5321 §4.1.1.11).
fn unsupported(key: &str) -> Reply {
    let key: String = key.chars().take(64).collect();
    Reply::new(555, Enhanced(5, 5, 4), format!("Unsupported option: {key}"))
}

/// 501 for a DSN parameter given twice or with a bad value (RFC 3461 §4).
fn bad_param(key: &str) -> Reply {
    let key = key.to_ascii_uppercase();
    Reply::new(501, Enhanced(5, 5, 4), format!("Bad {key} parameter"))
}

/// `"RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ) [SP Rcpt-parameters]`
/// `<name>` -> `<name@origin>` for a plain name (not `<>`, not
/// `<postmaster>`, nothing quoted or routed); `None` otherwise.
fn qualify(path: &str, origin: Option<&str>) -> Option<String> {
    let origin = origin.filter(|o| !o.is_empty())?;
    let name = path.strip_prefix('<')?.strip_suffix('>')?;
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+=".contains(&b));
    (plain && !name.eq_ignore_ascii_case("postmaster")).then(|| format!("<{name}@{origin}>"))
}

fn parse_rcpt(arg: &str, origin: Option<&str>) -> Result<Command, Reply> {
    let rest = strip_keyword(arg, "TO:")
        .ok_or_else(|| Reply::new(501, Enhanced(5, 5, 4), "Syntax: RCPT TO:<address>"))?;
    let (path, params) = split_path(rest);
    let dsn = rcpt_params(params)?;
    let qualified = qualify(path, origin);
    let path = qualified.as_deref().unwrap_or(path);
    let to =
        ForwardPath::parse(path).map_err(|e| address_reply(e, Enhanced(5, 1, 3), "Recipient"))?;
    Ok(Command::Rcpt(to, dsn))
}

/// RCPT's parameters: NOTIFY and ORCPT (RFC 3461 §4.1, §4.2), each at
/// most once; anything else is unknown (555).
fn rcpt_params(params: &str) -> Result<RcptDsn, Reply> {
    let mut dsn = RcptDsn::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "NOTIFY" if !dsn.notify.is_given() => {
                dsn.notify = Notify::parse(value).ok_or_else(|| bad_param(key))?
            }
            "ORCPT"
                if dsn.orcpt.is_none()
                    && value.len() <= crate::dsn::MAX_ORCPT
                    && crate::dsn::valid_orcpt(value) =>
            {
                dsn.orcpt = Some(value.to_string())
            }
            "NOTIFY" | "ORCPT" => return Err(bad_param(key)),
            _ => return Err(unsupported(key)),
        }
    }
    Ok(dsn)
}

/// Case-insensitive `FROM:`/`TO:`, then optional spaces (Postfix tolerates
/// `MAIL FROM: <a@b>`, and so do we).
fn strip_keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    let head = arg.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    Some(arg[kw.len()..].trim_start_matches(' '))
}

/// Splits `<path> params` at the end of the path, honouring quoted strings
/// (a quoted local part may hold spaces and `>`).
fn split_path(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return match s.find(' ') {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
    }
    let mut quoted = false;
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return (&s[..=i], &s[i + 1..]),
            _ => {}
        }
        i += 1;
    }
    (s, "")
}

fn address_reply(e: AddressError, syntax_code: Enhanced, who: &str) -> Reply {
    match e {
        // RFC 5321 §4.5.3.1.10: "501 Path too long".
        AddressError::PathTooLong => {
            Reply::new(501, syntax_code, format!("{who} address rejected: {e}"))
        }
        AddressError::LocalPartTooLong | AddressError::DomainTooLong => {
            Reply::new(553, syntax_code, format!("{who} address rejected: {e}"))
        }
        AddressError::Syntax(_) => Reply::new(
            501,
            syntax_code,
            format!("{who} address rejected: bad address syntax ({e})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;

    fn ok(line: &str) -> Command {
        parse(line.as_bytes()).unwrap_or_else(|r| panic!("{line}: {r}"))
    }

    fn code(line: &[u8]) -> u16 {
        parse(line).err().map(|r| r.code).unwrap_or(0)
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            ok("ehlo client.example"),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(ok("HeLo x"), Command::Helo("x".into()));
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(ok("NOOP anything at all"), Command::Noop);
    }

    #[test]
    fn unknown_command_is_500() {
        assert_eq!(code(b"FOO"), 500);
        assert_eq!(code(b""), 500);
    }

    #[test]
    fn missing_or_extra_arguments_are_501() {
        assert_eq!(code(b"HELO"), 501);
        assert_eq!(code(b"EHLO "), 501);
        assert_eq!(code(b"DATA now"), 501);
        assert_eq!(code(b"MAIL <a@b>"), 501);
        assert_eq!(code(b"RCPT <a@b>"), 501);
        assert_eq!(code(b"VRFY"), 501);
    }

    #[test]
    fn mail_with_parameters() {
        let c = ok("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8");
        let Command::Mail(from, p) = c else { panic!() };
        assert_eq!(from.to_string(), "<a@b.example>");
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: BodyType::EightBitMime,
                smtputf8: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn dsn_parameters_of_mail_and_rcpt() {
        // RFC 3461 §4.1-4.4.
        let c = ok("MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ+2B314");
        let Command::Mail(_, p) = c else { panic!() };
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+2B314"));
        let c = ok("RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+40d.example");
        let Command::Rcpt(_, dsn) = c else { panic!() };
        assert!(dsn.notify.success() && dsn.notify.failure() && !dsn.notify.delay());
        assert_eq!(dsn.orcpt.as_deref(), Some("rfc822;c+40d.example"));
        let long = format!("MAIL FROM:<a@b> ENVID={}", "x".repeat(101));
        for bad in [
            "MAIL FROM:<a@b> RET=ALL",
            "MAIL FROM:<a@b> RET=FULL RET=HDRS",
            "MAIL FROM:<a@b> ENVID=a+4",
            "MAIL FROM:<a@b> ENVID=a=b",
            "MAIL FROM:<a@b> ENVID",
            long.as_str(),
            "RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<a@b> NOTIFY=",
            "RCPT TO:<a@b> NOTIFY=SUCCESS NOTIFY=FAILURE",
            "RCPT TO:<a@b> ORCPT=a@b",
            "RCPT TO:<a@b> ORCPT=rfc822;a+ZZb",
            "RCPT TO:<a@b> ORCPT=rfc822;",
        ] {
            assert_eq!(code(bad.as_bytes()), 501, "{bad}");
        }
    }

    #[test]
    fn mail_from_tolerates_a_space_and_lower_case() {
        assert!(matches!(ok("mail from: <a@b.example>"), Command::Mail(..)));
        // A bare name is qualified only when an origin is given.
        assert!(parse(b"RCPT TO:<root>").is_err());
        let q = |l: &str| parse_qualifying(l.as_bytes(), Some("example.test"));
        assert!(
            matches!(q("RCPT TO:<root>"), Ok(Command::Rcpt(ForwardPath::Mailbox(m), _)) if m.to_string() == "root@example.test")
        );
        assert!(
            matches!(q("MAIL FROM:<cron>"), Ok(Command::Mail(ReversePath::Mailbox(m), _)) if m.to_string() == "cron@example.test")
        );
        assert!(matches!(
            q("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(ForwardPath::Postmaster, _))
        ));
        assert!(matches!(
            q("MAIL FROM:<>"),
            Ok(Command::Mail(ReversePath::Null, _))
        ));
        assert_eq!(
            ok("MAIL FROM:<>"),
            Command::Mail(ReversePath::Null, MailParams::default())
        );
    }

    #[test]
    fn the_auth_parameter_of_mail_is_accepted_and_set_aside() {
        for good in ["AUTH=<>", "AUTH=alice+40x.test", "auth=e+2Bf"] {
            let c = ok(&format!("MAIL FROM:<a@b.example> {good} SIZE=10"));
            assert!(
                matches!(c, Command::Mail(_, p) if p.size == Some(10)),
                "{good}"
            );
        }
        for bad in ["AUTH=a+4", "AUTH=a+4g", "AUTH=a=b", "AUTH=", "AUTH"] {
            assert_eq!(
                code(format!("MAIL FROM:<a@b> {bad}").as_bytes()),
                501,
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_mail_parameter_is_555() {
        assert_eq!(code(b"MAIL FROM:<a@b> FOO=1"), 555);
        assert_eq!(code(b"RCPT TO:<a@b> FOO=NEVER"), 555);
        assert_eq!(code(b"MAIL FROM:<a@b> SIZE=abc"), 501);
        assert_eq!(code(b"MAIL FROM:<a@b> BODY=9BIT"), 501);
    }

    #[test]
    fn quoted_local_part_with_space_and_angle() {
        let c = ok(r#"RCPT TO:<"a >b"@c.example>"#);
        let Command::Rcpt(ForwardPath::Mailbox(Mailbox { local, .. }), _) = c else {
            panic!()
        };
        assert_eq!(local, r#""a >b""#);
    }

    #[test]
    fn path_limits_map_to_501_and_553() {
        let long_local = format!("RCPT TO:<{}@x.example>", "a".repeat(65));
        assert_eq!(code(long_local.as_bytes()), 553);
        let long_path = format!("RCPT TO:<{}@{}.example>", "a".repeat(60), "b.".repeat(100));
        assert_eq!(code(long_path.as_bytes()), 501);
        assert_eq!(code(b"RCPT TO:<a@@b>"), 501);
    }

    #[test]
    fn control_characters_and_bad_utf8_are_refused() {
        assert_eq!(code(b"HELO a\0b"), 500);
        assert_eq!(code(b"HELO a\rb"), 500);
        assert_eq!(code(b"HELO \xff"), 500);
    }
}
