//! The `sendmail` command for local programs (cron, scripts, mail user
//! agents): reads a message on standard input and queues it, as Postfix's
//! and sendmail's `sendmail` do. Options: `-t` (recipients from To/Cc/Bcc,
//! Bcc removed), `-f sender`, `-F "full name"`, `-i`/`-oi` (a lone dot
//! does not end the message), `-bs` (SMTP on stdin/stdout), `-bp`
//! (= mailq), `-q` (run the queue), `-bi` (check the aliases file), `-v`;
//! the rest of sendmail's option set is parsed as its getopt string says
//! (a value attached or in the next argument) and has no effect, as with
//! Postfix (see `USAGE`). Date, Message-ID and
//! From are added when missing. Exit codes follow sysexits(3).
//!
//! The parsing of options, headers and address lists is pure and unit
//! tested; `submit` is the edge that writes the spool.

use crate::address::{ForwardPath, Mailbox, ReversePath};

/// sysexits(3)
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Read a message and queue it (`-bm`, the default).
    Deliver,
    /// `-bs`: one SMTP session on stdin/stdout.
    Smtp,
    /// `-bp` or invoked as `mailq`.
    ListQueue,
    /// `-q`: process the queue (a running daemon is asked to flush).
    RunQueue,
    /// `-bi`, `-I` or invoked as `newaliases`.
    CheckAliases,
    /// `--help`.
    Help,
    /// `-bV` (as Exim) and `--version`.
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub extract: bool,
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub verbose: bool,
    pub config: Option<String>,
    pub recipients: Vec<String>,
    pub warnings: Vec<String>,
    /// RFC 3461 requests: -N (for every recipient), -R, -V (as given;
    /// xtext-encoded when queued).
    pub notify: crate::dsn::Notify,
    pub ret: Option<crate::dsn::Ret>,
    pub envid: Option<String>,
}

pub const USAGE: &str = "usage: sendmail [options] [recipient ...]
  -t            recipients from the To:, Cc: and Bcc: headers (Bcc: removed)
  -i, -oi       a line with a single dot does not end the message
  -f sender     the envelope sender (-r too); -f '<>' for the null sender
  -F name       the sender's full name, for a From: header added here
  -C file       the configuration file (else $SATCHEL_CONFIG, /etc/satchel/satchel.conf)
  -v            report the queue ID and log to stderr
  -bm           read a message and queue it (the default)
  -bs           SMTP on standard input and output
  -bp           list the queue (as mailq)
  -bi, -I       check the aliases file (as newaliases)
  -q            deliver the queue now (asks a running server to flush)
  -bV, --version  the version
  -N dsn        delivery notices wanted: never, or a list of success, failure,
                delay (RFC 3461; the default: failure and delay)
  -R ret        full or hdrs: what a non-delivery notice returns
  -V envid      an envelope ID for the notices
Accepted without effect, as Postfix and sendmail accept them: -B type, -G, -U,
-n, -m, -c, -x, -A c|m, -e x, -h hops, -L tag, -O option=value, -o x [value],
-p protocol, -d x. Warned about: -X logfile.
Also installed as mailq (list the queue) and newaliases (check the aliases).";

/// Option letters that take a value, attached (`-fuser`) or in the next
/// argument (`-f user`), as sendmail's and Postfix's getopt strings say.
const TAKES_VALUE: &str = "ABCFLNORVXbdefhoprq";

impl Options {
    /// -N, -R and -V into the envelope (RFC 3461; the ID as xtext).
    fn ask_for_notices(&self, env: &mut crate::envelope::Envelope) {
        (env.ret, env.envid) = (self.ret, self.envid.as_deref().map(crate::dsn::xtext));
        for r in env.rcpts.iter_mut() {
            r.dsn.notify = self.notify;
        }
    }
}

/// Parses sendmail-style arguments (without argv[0]).
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mode: Mode::Deliver,
        extract: false,
        ignore_dots: false,
        sender: None,
        full_name: None,
        verbose: false,
        config: None,
        recipients: Vec::new(),
        warnings: Vec::new(),
        notify: Default::default(),
        ret: None,
        envid: None,
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        match a.as_str() {
            "--" => {
                o.recipients.extend(args[i..].iter().cloned());
                break;
            }
            "--help" => o.mode = Mode::Help,
            "--version" => o.mode = Mode::Version,
            _ => match a.strip_prefix('-').filter(|s| !s.is_empty()) {
                Some(letters) => cluster(&mut o, letters, args, &mut i)?,
                None => o.recipients.push(a.clone()),
            },
        }
    }
    Ok(o)
}

/// One argument of option letters (`-ti`, `-oi`, `-f user`): flags may be
/// grouped; a letter that takes a value takes the rest of the argument or,
/// when nothing is left, the next one (`args[*i]`).
fn cluster(o: &mut Options, letters: &str, args: &[String], i: &mut usize) -> Result<(), String> {
    for (at, flag) in letters.char_indices() {
        if !TAKES_VALUE.contains(flag) {
            flag_option(o, flag)?;
            continue;
        }
        let attached = &letters[at + flag.len_utf8()..];
        // -q takes its optional interval attached only (-q, -q30m).
        let value = if !attached.is_empty() || flag == 'q' {
            attached.to_string()
        } else {
            let v = args
                .get(*i)
                .cloned()
                .ok_or_else(|| format!("option -{flag} needs a value"))?;
            *i += 1;
            v
        };
        return value_option(o, flag, value);
    }
    Ok(())
}

fn flag_option(o: &mut Options, flag: char) -> Result<(), String> {
    match flag {
        't' => o.extract = true,
        'i' => o.ignore_dots = true,
        'v' => o.verbose = true,
        'I' => o.mode = Mode::CheckAliases,
        // Gateway submission, initial user submission, no aliasing, me
        // too, and Postfix's ignored -c and -x: no effect here.
        'G' | 'U' | 'n' | 'm' | 'c' | 'x' => {}
        _ => {
            return Err(format!(
                "unknown option -{flag} (sendmail --help lists them)"
            ))
        }
    }
    Ok(())
}

fn value_option(o: &mut Options, flag: char, v: String) -> Result<(), String> {
    match flag {
        'f' | 'r' => o.sender = Some(v),
        'F' => o.full_name = Some(v),
        'C' => o.config = Some(v),
        'q' => o.mode = Mode::RunQueue,
        'b' => {
            o.mode = match v.as_str() {
                "m" => Mode::Deliver,
                "s" => Mode::Smtp,
                "p" => Mode::ListQueue,
                "i" => Mode::CheckAliases,
                "V" => Mode::Version,
                other => return Err(format!("-b{other} is not supported")),
            }
        }
        // -oi is the one -o option with an effect; the others (error
        // mode -oem, delivery mode -odb, -om, alias file -oA…) are
        // sendmail.cf settings that satchel.conf replaces.
        'o' if v == "i" => o.ignore_dots = true,
        // Body type, gateway/submission mode, error mode, hop count, log
        // tag, protocol, debugging, sendmail.cf options: no effect.
        'o' | 'B' | 'A' | 'e' | 'h' | 'L' | 'p' | 'd' | 'O' => {}
        'N' => {
            o.notify = crate::dsn::Notify::parse(&v)
                .ok_or(format!("bad -N {v}: never, or success, failure, delay"))?
        }
        'R' => o.ret = Some(crate::dsn::Ret::parse(&v).ok_or(format!("bad -R {v}: full or hdrs"))?),
        'V' if crate::dsn::xtext(&v).len() <= crate::dsn::MAX_ENVID => o.envid = Some(v),
        'V' => return Err("-V: an envelope ID is at most 100 characters".into()),
        _ => o.warnings.push(format!("-{flag} {v} ignored")),
    }
    Ok(())
}

/// Normalizes line ends to CRLF (LF alone and CR alone both end a line:
/// nothing bare leaves satchel) and, unless `ignore_dots`, stops at a line
/// holding a single `.`.
pub fn normalize(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 40);
    // A leading mbox separator ("From sender date", as `git format-patch`
    // writes) is no header: skipped, as Postfix's and sendmail's do.
    let mut i = if input.starts_with(b"From ") {
        input
            .iter()
            .position(|&b| b == b'\n')
            .map_or(input.len(), |p| p + 1)
    } else {
        0
    };
    while i < input.len() {
        let end = input[i..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map(|p| i + p);
        let (line, next) = match end {
            Some(e) if input[e] == b'\r' && input.get(e + 1) == Some(&b'\n') => {
                (&input[i..e], e + 2)
            }
            Some(e) => (&input[i..e], e + 1),
            None => (&input[i..], input.len()),
        };
        if !ignore_dots && line == b"." {
            break;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        i = next;
    }
    out
}

/// The header section: `(name, full field text incl. folded lines)` pairs
/// and the index where the body starts (after the empty line, if any).
/// `has_separator` is false when the text did not begin with headers.
pub struct Headers {
    pub fields: Vec<(String, String)>,
    /// Where each field is in the message (first line through last, without
    /// its CRLF): copied from there, its bytes stay as they were (a Latin-1
    /// subject is not made U+FFFD by the text above).
    pub spans: Vec<(usize, usize)>,
    pub body_start: usize,
    pub has_separator: bool,
}

pub fn split_headers(msg: &[u8]) -> Headers {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| pos + p)
            .unwrap_or(msg.len());
        let line = String::from_utf8_lossy(&msg[pos..end]).into_owned();
        let next = (end + 2).min(msg.len());
        if line.is_empty() {
            return Headers {
                fields,
                spans,
                body_start: next,
                has_separator: true,
            };
        }
        if line.starts_with([' ', '\t']) {
            match (fields.last_mut(), spans.last_mut()) {
                (Some((_, text)), Some(span)) => {
                    text.push_str("\r\n");
                    text.push_str(&line);
                    span.1 = end;
                    pos = next;
                    continue;
                }
                _ => break,
            }
        }
        let name_ok = line
            .find(':')
            .map(|c| c > 0 && line[..c].bytes().all(|b| (33..=126).contains(&b)))
            .unwrap_or(false);
        if !name_ok {
            break;
        }
        let name = line[..line.find(':').unwrap_or(0)].to_string();
        fields.push((name, line));
        spans.push((pos, end));
        pos = next;
    }
    Headers {
        fields,
        spans,
        body_start: pos,
        has_separator: false,
    }
}

/// The addresses of an RFC 5322 address list (`a@b, "X, Y" <c@d>,
/// group: e@f;`), without display names and comments.
pub fn address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut depth, mut angle) = (false, 0usize, false);
    let mut angle_addr = String::new();
    let mut push = |cur: &mut String, angle_addr: &mut String| {
        let a = if !angle_addr.is_empty() {
            angle_addr.trim().to_string()
        } else {
            cur.trim().to_string()
        };
        if !a.is_empty() && !a.ends_with(':') {
            out.push(a);
        }
        cur.clear();
        angle_addr.clear();
    };
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                chars.next();
            }
            '"' if depth == 0 => quoted = !quoted,
            _ if quoted => {}
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            '<' => angle = true,
            '>' => angle = false,
            ':' if !angle => cur.clear(), // "group:" starts a list
            ',' | ';' if !angle => push(&mut cur, &mut angle_addr),
            _ if angle => angle_addr.push(c),
            _ if c.is_whitespace() => {}
            _ => cur.push(c),
        }
    }
    push(&mut cur, &mut angle_addr);
    out
}

/// The domain that completes a bare user name: the host name when it is a
/// local domain (Postfix's `$myorigin`), else the first local domain.
pub fn origin(hostname: &str, local_domains: &[String]) -> String {
    if local_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(hostname))
        || local_domains.is_empty()
    {
        hostname.to_string()
    } else {
        local_domains[0].clone()
    }
}

/// A recipient from the command line or a header: `user` alone means a
/// user of this host.
pub fn recipient(addr: &str, hostname: &str) -> Result<ForwardPath, String> {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    let full = if a.contains('@') {
        a.to_string()
    } else {
        format!("{a}@{hostname}")
    };
    Mailbox::parse(&full)
        .map(ForwardPath::Mailbox)
        .map_err(|e| format!("bad address syntax: <{a}>: {e}"))
}

/// The reverse-path for `-f` (which may be `<>` or empty for the null path).
pub fn sender(addr: &str, hostname: &str) -> Result<ReversePath, String> {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.is_empty() {
        return Ok(ReversePath::Null);
    }
    let full = if a.contains('@') {
        a.to_string()
    } else {
        format!("{a}@{hostname}")
    };
    Mailbox::parse(&full)
        .map(ReversePath::Mailbox)
        .map_err(|e| format!("bad sender address: <{a}>: {e}"))
}

/// Builds the message to queue: `-t` recipients collected, Bcc removed,
/// From/Date/Message-ID added when missing.
pub struct Prepared {
    pub message: Vec<u8>,
    pub header_recipients: Vec<String>,
}

pub fn prepare(
    normalized: &[u8],
    extract: bool,
    from_header: &str,
    date: &str,
    message_id: &str,
) -> Prepared {
    let h = split_headers(normalized);
    let mut header_recipients = Vec::new();
    let mut out = Vec::with_capacity(normalized.len() + 256);
    let has = |n: &str| h.fields.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    for ((name, text), &(start, end)) in h.fields.iter().zip(&h.spans) {
        let value = &text[name.len() + 1..];
        if extract
            && ["to", "cc", "bcc"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
        {
            header_recipients.extend(address_list(&value.replace("\r\n", "")));
        }
        if name.eq_ignore_ascii_case("bcc") {
            continue; // never shown to anyone
        }
        out.extend_from_slice(&normalized[start..end]);
        out.extend_from_slice(b"\r\n");
    }
    if !has("from") {
        out.extend_from_slice(format!("From: {from_header}\r\n").as_bytes());
    }
    if !has("date") {
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if !has("message-id") {
        out.extend_from_slice(format!("Message-ID: <{message_id}>\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&normalized[h.body_start..]);
    Prepared {
        message: out,
        header_recipients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn options_parse_like_sendmail() {
        let o = parse_args(&args(&[
            "-t",
            "-oi",
            "-f",
            "me@x.test",
            "-FJo Doe",
            "-oem",
            "bob",
        ]))
        .unwrap();
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("me@x.test"));
        assert_eq!(o.full_name.as_deref(), Some("Jo Doe"));
        assert_eq!(o.recipients, vec!["bob"]);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert_eq!(parse_args(&args(&["-bs"])).unwrap().mode, Mode::Smtp);
        for grouped in ["-ti", "-it"] {
            let o = parse_args(&args(&[grouped, "x@y"])).unwrap();
            assert!(o.extract && o.ignore_dots && !o.verbose, "{grouped}");
            assert_eq!(o.recipients, vec!["x@y".to_string()]);
        }
        assert!(parse_args(&args(&["-tz"])).is_err());
        assert_eq!(parse_args(&args(&["-bp"])).unwrap().mode, Mode::ListQueue);
        assert_eq!(parse_args(&args(&["-q"])).unwrap().mode, Mode::RunQueue);
        assert_eq!(parse_args(&args(&["-q30m"])).unwrap().mode, Mode::RunQueue);
        assert_eq!(
            parse_args(&args(&["-bi"])).unwrap().mode,
            Mode::CheckAliases
        );
        assert!(parse_args(&args(&["-Z"])).is_err());
        assert!(parse_args(&args(&["-f"])).is_err());
        assert_eq!(
            parse_args(&args(&["--", "-odd"])).unwrap().recipients,
            vec!["-odd"]
        );
    }

    #[test]
    fn options_with_a_value_take_it_attached_or_from_the_next_argument() {
        for argv in [
            &["-O", "DeliveryMode=b", "alice"][..],
            &["-h", "10", "alice"],
            &["-h10", "alice"],
            &["-o", "em", "alice"],
            &["-L", "cron", "alice"],
            &["-p", "local", "alice"],
            &["-X", "/tmp/log", "alice"],
            &["-N", "never", "alice"],
            &["-R", "hdrs", "alice"],
            &["-V", "envid1", "alice"],
            &["-B", "8BITMIME", "alice"],
            &["-A", "m", "alice"],
            &["-e", "m", "alice"],
        ] {
            let o = parse_args(&args(argv)).unwrap();
            assert_eq!(o.recipients, vec!["alice"], "{argv:?}");
        }
        assert!(parse_args(&args(&["-o", "i"])).unwrap().ignore_dots);
        assert!(parse_args(&args(&["-O"])).is_err());
    }

    #[test]
    fn options_without_effect_are_accepted_silently() {
        let o = parse_args(&args(&[
            "-oem",
            "-oee",
            "-odi",
            "-odb",
            "-oi",
            "-B8BITMIME",
            "-B7BIT",
            "-G",
            "-Am",
            "-Ac",
            "-U",
            "-n",
            "-m",
            "-em",
            "-h",
            "5",
            "-O",
            "DeliveryMode=b",
            "bob",
        ]))
        .unwrap();
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert_eq!(o.recipients, vec!["bob"]);
        assert_eq!(o.mode, Mode::Deliver);
        let o = parse_args(&args(&[
            "-N",
            "success,delay",
            "-R",
            "hdrs",
            "-V",
            "a b",
            "bob",
        ]))
        .unwrap();
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(o.notify.success() && o.notify.delay() && !o.notify.failure());
        assert_eq!(
            (o.ret, o.envid.as_deref()),
            (Some(crate::dsn::Ret::Hdrs), Some("a b"))
        );
        for bad in [&["-N", "always", "bob"][..], &["-R", "all", "bob"]] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(parse_args(&args(&["--help"])).unwrap().mode, Mode::Help);
        assert_eq!(parse_args(&args(&["-bV"])).unwrap().mode, Mode::Version);
        assert_eq!(parse_args(&args(&["-I"])).unwrap().mode, Mode::CheckAliases);
    }

    #[test]
    fn line_ends_become_crlf_and_a_lone_dot_ends_the_message() {
        assert_eq!(normalize(b"a\nb\r\nc\rd", false), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(normalize(b"a\n.\nb\n", false), b"a\r\n");
        assert_eq!(normalize(b"a\n.\nb\n", true), b"a\r\n.\r\nb\r\n");
        // git format-patch --stdout starts with an mbox separator.
        assert_eq!(
            normalize(
                b"From 1a2b Mon Sep 17 00:00:00 2001\nFrom: a@b\n\nx\n",
                true
            ),
            b"From: a@b\r\n\r\nx\r\n"
        );
        assert_eq!(
            normalize(b"From: a@b\n\nx\n", true),
            b"From: a@b\r\n\r\nx\r\n"
        );
    }

    #[test]
    fn address_lists_yield_bare_addresses() {
        assert_eq!(
            address_list("Jo <jo@x.test>, \"Doe, J\" <jd@x.test>, plain@x.test (comment), team: a@x.test, b@x.test;"),
            vec!["jo@x.test", "jd@x.test", "plain@x.test", "a@x.test", "b@x.test"]
        );
        assert!(address_list("undisclosed-recipients:;").is_empty());
    }

    #[test]
    fn header_bytes_that_are_not_utf8_are_kept_as_they_are() {
        let msg = normalize(
            b"Subject: caf\xe9\n\tand more\nBcc: x@y\n\nbody \xe9\n",
            true,
        );
        let p = prepare(&msg, true, "a@b", "Mon, 1 Jan 2026 00:00:00 +0000", "id@h");
        assert!(
            p.message
                .starts_with(b"Subject: caf\xe9\r\n\tand more\r\nFrom: a@b\r\n"),
            "{:?}",
            String::from_utf8_lossy(&p.message)
        );
        assert!(p.message.ends_with(b"\r\n\r\nbody \xe9\r\n"));
        assert_eq!(p.header_recipients, vec!["x@y".to_string()]);
    }

    #[test]
    fn prepare_extracts_recipients_removes_bcc_and_adds_missing_headers() {
        let msg = normalize(
            b"To: a@x.test\nCc: b@x.test,\n c@x.test\nBcc: secret@x.test\nSubject: hi\n\nbody\n",
            true,
        );
        let p = prepare(&msg, true, "me@h", "DATE", "ID@h");
        assert_eq!(
            p.header_recipients,
            vec!["a@x.test", "b@x.test", "c@x.test", "secret@x.test"]
        );
        let text = String::from_utf8(p.message).unwrap();
        assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
        assert!(!text.contains("secret"));
        assert!(text.contains("Cc: b@x.test,\r\n c@x.test\r\n"));
        assert!(
            text.contains("From: me@h\r\nDate: DATE\r\nMessage-ID: <ID@h>\r\n\r\nbody\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_message_without_headers_gets_them_before_the_body() {
        let msg = normalize(b"just a body line\n", true);
        let p = prepare(&msg, false, "me@h", "D", "I@h");
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "From: me@h\r\nDate: D\r\nMessage-ID: <I@h>\r\n\r\njust a body line\r\n"
        );
    }

    #[test]
    fn bare_user_names_are_local() {
        assert_eq!(
            recipient("root", "h.test").unwrap().to_string(),
            "<root@h.test>"
        );
        assert!(recipient("bad address@", "h").is_err());
        assert_eq!(sender("<>", "h").unwrap(), ReversePath::Null);
    }
}

/// The edge: validates recipients, queues the message, returns its ID or
/// a sysexits code with one line for stderr.
pub mod submit {
    use super::*;
    use crate::config::Config;
    use crate::envelope::Envelope;
    use crate::policy::LocalPolicy;
    use crate::smtp::session::{Policy, RcptClass};
    use crate::spool::Spool;
    use crate::time;
    use std::os::unix::fs::MetadataExt;

    /// The invoking user's uid and login name (from /etc/passwd).
    pub fn invoking_user() -> (u32, String) {
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let name = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| {
                p.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
                })
            })
            .unwrap_or_else(|| format!("uid{uid}"));
        (uid, name)
    }

    /// The `From:` field for a message that has none (`-F` gives the
    /// full name).
    fn from_header(from: &ReversePath, full_name: Option<&str>, hostname: &str) -> String {
        let addr = match from {
            ReversePath::Mailbox(m) => m.to_string(),
            ReversePath::Null => format!("MAILER-DAEMON@{hostname}"),
        };
        match full_name {
            Some(n) => format!("\"{}\" <{addr}>", n.replace(['"', '\\', '\r', '\n'], "")),
            None => addr,
        }
    }

    /// The recipients, each once, and a line for each unknown local one:
    /// one typo in a list (MAILTO=root,typo) must not cost the rest.
    #[allow(clippy::type_complexity)]
    fn recipients<'a>(
        policy: &LocalPolicy,
        given: impl Iterator<Item = &'a String>,
        origin: &str,
    ) -> Result<(Vec<ForwardPath>, Vec<String>), (u8, String)> {
        let mut rcpts: Vec<ForwardPath> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        for r in given {
            let fp = recipient(r, origin).map_err(|e| (EX_DATAERR, e))?;
            if let ForwardPath::Mailbox(m) = &fp {
                if policy.classify(m) == RcptClass::LocalUnknown {
                    let line = format!("<{m}>: user unknown");
                    if !unknown.contains(&line) {
                        unknown.push(line);
                    }
                    continue;
                }
            }
            if !rcpts.contains(&fp) {
                rcpts.push(fp);
            }
        }
        Ok((rcpts, unknown))
    }

    /// The limits a server would apply, said to the program now rather
    /// than found later by the pickup (which could only set it aside).
    fn check_limits(
        cfg: &Config,
        rcpts: &[ForwardPath],
        unknown: &[String],
        size: usize,
        via_maildrop: bool,
    ) -> Result<(), (u8, String)> {
        if rcpts.is_empty() {
            if !unknown.is_empty() {
                return Err((EX_NOUSER, unknown.join("; ")));
            }
            return Err((
                EX_USAGE,
                "no recipients given (name them, or use -t)".into(),
            ));
        }
        if size as u64 > cfg.message_size_limit {
            return Err((
                EX_DATAERR,
                format!(
                    "message too big: {size} octets (message_size_limit is {})",
                    cfg.message_size_limit
                ),
            ));
        }
        let most = crate::spool::maildrop::MAX_RCPTS;
        if via_maildrop && rcpts.len() > most {
            return Err((
                EX_USAGE,
                format!(
                    "too many recipients: {} (at most {most} per message)",
                    rcpts.len()
                ),
            ));
        }
        Ok(())
    }

    /// Queues `input`; `invoker` is the user who ran sendmail (found before
    /// any change of identity), whom the `Received:` line names.
    /// `Ok((id, unknown))`: queued for every recipient but the local ones
    /// that do not exist, listed in `unknown` (the caller says so and exits
    /// 67, as sendmail does, having still sent the message to the others).
    pub fn run(
        cfg: &Config,
        policy: &LocalPolicy,
        spool: &Spool,
        o: &Options,
        input: &[u8],
        invoker: (u32, String),
    ) -> Result<(String, Vec<String>), (u8, String)> {
        let (uid, user) = invoker;
        // A spool short of room takes nothing new; the caller tries later.
        if let Some(why) = crate::storage::refusal(cfg, Some(spool)) {
            return Err((
                EX_TEMPFAIL,
                format!("cannot queue now: no room for new mail: {why}"),
            ));
        }
        let origin = cfg.myorigin();
        let from = match &o.sender {
            Some(s) => super::sender(s, &origin).map_err(|e| (EX_DATAERR, e))?,
            None => super::sender(&user, &origin).map_err(|e| (EX_DATAERR, e))?,
        };
        let normalized = normalize(input, o.ignore_dots);
        let now = time::unix_now();
        let from_header = from_header(&from, o.full_name.as_deref(), &cfg.hostname);
        // Direct into the spool when we may write it; otherwise (an ordinary
        // user on a system-wide install) through the maildrop.
        let inc = match spool.create() {
            Ok(i) => Some(i),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
            Err(e) => return Err((EX_TEMPFAIL, format!("cannot queue: {e}"))),
        };
        let id = match &inc {
            Some(i) => i.id.clone(),
            None => format!("{:X}.{}", now, std::process::id()),
        };
        let prepared = prepare(
            &normalized,
            o.extract,
            &from_header,
            &time::rfc5322(now),
            &format!("{id}@{}", cfg.hostname),
        );
        let all = o.recipients.iter().chain(prepared.header_recipients.iter());
        let (rcpts, unknown) = recipients(policy, all, &origin)?;
        // Local submission: envelope and header addresses rewritten.
        let rw = &policy.rewriter;
        let from = rw.reverse_path(&from);
        let rcpts: Vec<ForwardPath> = rcpts.iter().map(|r| rw.forward_path(r)).collect();
        let prepared = Prepared {
            message: rw.message(&prepared.message),
            header_recipients: Vec::new(),
        };
        check_limits(cfg, &rcpts, &unknown, prepared.message.len(), inc.is_none())?;
        let mut env = Envelope::local(from, rcpts, &user, now, &prepared.message);
        o.ask_for_notices(&mut env);
        let Some(mut inc) = inc else {
            return crate::spool::maildrop::submit(spool.root(), &env, &prepared.message)
                .map(|name| (format!("maildrop/{name}"), unknown))
                .map_err(|e| (EX_TEMPFAIL, format!("cannot write to the maildrop: {e}")));
        };
        // RFC 5321 §4.4 asks a time-stamp of every host that handles the message.
        let received = format!(
            "Received: by {} (satchel, from userid {uid})\r\n\tid {id}; {}\r\n",
            cfg.hostname,
            time::rfc5322(now)
        );
        inc.write(received.as_bytes());
        inc.write(&prepared.message);
        inc.commit(&mut env)
            .map_err(|e| (EX_TEMPFAIL, format!("cannot queue: {e}")))?;
        log::info!(
            "{id}: uid={uid} from={}, size={}, nrcpt={} (queue active)",
            env.from,
            env.size,
            env.rcpts.len()
        );
        Ok((id, unknown))
    }
}
