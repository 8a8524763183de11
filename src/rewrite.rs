//! Address rewriting, as Postfix's cleanup(8) does it on the way into the
//! queue: bare names get `@myorigin` (append_at_myorigin), the canonical
//! tables map addresses (canonical(5): `user@domain`, `user`, `@domain`
//! keys; an address or `@domain` as the result), and `masquerade_domains`
//! hides host names (`host.example.test` -> `example.test`).
//!
//! The envelope sender goes through `sender` and each recipient through
//! `recipient`, for all mail. Header fields are rewritten (`header_section`)
//! only for mail this host vouches for (local submission, `relay_networks`,
//! authenticated clients): sender fields (From, Sender, Reply-To, Resent-
//! From, Resent-Sender) as the envelope sender, recipient fields (To, Cc,
//! Resent-To, Resent-Cc) get `@myorigin` and `recipient_canonical_file`.
//! Only the address inside a field changes; names, comments and folding
//! stay as they were. Pure: `Canonical::load` is the only read.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::address::{ForwardPath, Mailbox, ReversePath};
use crate::envelope::Envelope;

/// A canonical table: lower-case keys (`user@domain`, `user`, `@domain`)
/// to an address or `@domain`.
#[derive(Debug, Clone, Default)]
pub struct Canonical {
    map: HashMap<String, String>,
}

impl Canonical {
    pub fn load(path: &std::path::Path) -> Result<Canonical, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Canonical::parse(&text, &path.display().to_string())
    }

    /// `KEY RESULT` lines, `#` comments; `FILE:LINE: what is wrong`.
    pub fn parse(text: &str, file: &str) -> Result<Canonical, String> {
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [key, result] = words[..] else {
                return Err(format!(
                    "{file}:{}: expected KEY RESULT (e.g. root admin@example.test)",
                    n + 1
                ));
            };
            let ok = |s: &str, bare_ok: bool| match s.rsplit_once('@') {
                Some((_, d)) => !d.is_empty() && !d.contains(['<', '>', ',']),
                None => bare_ok && crate::config::valid_user_name(&s.to_ascii_lowercase()),
            };
            if !ok(key, true) || !ok(result, false) {
                return Err(format!(
                    "{file}:{}: expected user@domain, user or @domain, then an address or @domain, found '{line}'",
                    n + 1
                ));
            }
            map.insert(key.to_ascii_lowercase(), result.to_string());
        }
        Ok(Canonical { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The result for `local@domain`: the whole address, the local part
    /// alone (in a local domain), then `@domain`.
    fn lookup(&self, local: &str, domain: &str, is_local: bool) -> Option<String> {
        let (l, d) = (local.to_ascii_lowercase(), domain.to_ascii_lowercase());
        let found = self
            .map
            .get(&format!("{l}@{d}"))
            .or_else(|| self.map.get(&l).filter(|_| is_local))
            .or_else(|| self.map.get(&format!("@{d}")))?;
        Some(match found.strip_prefix('@') {
            Some(new_domain) => format!("{local}@{new_domain}"),
            None => found.clone(),
        })
    }
}

/// Everything rewriting needs, built with the tables at load.
#[derive(Debug, Clone, Default)]
pub struct Rewriter {
    pub myorigin: String,
    /// Lower case: the domains this host delivers (for `user` keys).
    pub local_domains: Vec<String>,
    pub masquerade_domains: Vec<String>,
    pub masquerade_exceptions: HashSet<String>,
    pub sender_canonical: Canonical,
    pub recipient_canonical: Canonical,
}

const SENDER_FIELDS: &[&str] = &["from", "sender", "reply-to", "resent-from", "resent-sender"];
const RECIPIENT_FIELDS: &[&str] = &["to", "cc", "resent-to", "resent-cc"];

impl Rewriter {
    /// `name` -> `name@myorigin`; an address stays.
    pub fn qualify(&self, addr: &str) -> String {
        if addr.contains('@') || self.myorigin.is_empty() {
            addr.to_string()
        } else {
            format!("{addr}@{}", self.myorigin)
        }
    }

    /// An envelope or header sender: qualified, canonical, masqueraded.
    pub fn sender(&self, addr: &str) -> String {
        let a = self.qualify(addr);
        let a = self.canonical(&self.sender_canonical, &a);
        self.masquerade(&a)
    }

    /// A recipient: qualified, then `recipient_canonical_file`.
    pub fn recipient(&self, addr: &str) -> String {
        let a = self.qualify(addr);
        self.canonical(&self.recipient_canonical, &a)
    }

    fn canonical(&self, table: &Canonical, addr: &str) -> String {
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return addr.to_string();
        };
        let is_local = self
            .local_domains
            .iter()
            .chain(std::iter::once(&self.myorigin))
            .any(|d| d.eq_ignore_ascii_case(domain));
        table
            .lookup(local, domain, is_local)
            .unwrap_or_else(|| addr.to_string())
    }

    /// `user@host.example.test` -> `user@example.test` for a listed
    /// `example.test`, unless `user` is an exception.
    fn masquerade(&self, addr: &str) -> String {
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return addr.to_string();
        };
        if self
            .masquerade_exceptions
            .contains(&local.to_ascii_lowercase())
        {
            return addr.to_string();
        }
        let d = domain.to_ascii_lowercase();
        match self
            .masquerade_domains
            .iter()
            .find(|m| d.ends_with(&format!(".{m}")))
        {
            Some(m) => format!("{local}@{m}"),
            None => addr.to_string(),
        }
    }

    /// The envelope sender through `sender`.
    pub fn reverse_path(&self, p: &ReversePath) -> ReversePath {
        match p {
            ReversePath::Mailbox(m) => ReversePath::Mailbox(again(m, |a| self.sender(a))),
            ReversePath::Null => ReversePath::Null,
        }
    }

    /// A recipient through `recipient`.
    pub fn forward_path(&self, p: &ForwardPath) -> ForwardPath {
        match p {
            ForwardPath::Mailbox(m) => ForwardPath::Mailbox(again(m, |a| self.recipient(a))),
            ForwardPath::Postmaster => ForwardPath::Postmaster,
        }
    }

    /// The envelope sender and recipients of `env` (all mail).
    pub fn envelope(&self, env: &mut Envelope) {
        env.from = self.reverse_path(&env.from);
        for r in env.rcpts.iter_mut() {
            r.addr = self.forward_path(&r.addr);
        }
    }

    /// A whole message: its header section through `header_section`.
    pub fn message(&self, msg: &[u8]) -> Vec<u8> {
        if msg.starts_with(b"\r\n") {
            return msg.to_vec();
        }
        let end = msg
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(msg.len(), |i| i + 2);
        let mut out = self.header_section(&msg[..end]);
        out.extend_from_slice(&msg[end..]);
        out
    }

    /// The header section `head` (fields with their CRLFs, without the
    /// empty line) with the addresses of its sender and recipient fields
    /// rewritten; the other octets as they were.
    pub fn header_section(&self, head: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(head.len() + 64);
        for field in fields(head) {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
            let name = String::from_utf8_lossy(&field[..colon])
                .trim()
                .to_ascii_lowercase();
            let rewrite: Option<fn(&Rewriter, &str) -> String> =
                if SENDER_FIELDS.contains(&name.as_str()) {
                    Some(Rewriter::sender)
                } else if RECIPIENT_FIELDS.contains(&name.as_str()) {
                    Some(Rewriter::recipient)
                } else {
                    None
                };
            match (rewrite, std::str::from_utf8(&field[colon + 1..])) {
                (Some(f), Ok(value)) => {
                    out.extend_from_slice(&field[..=colon]);
                    out.extend_from_slice(rewrite_value(value, |a| f(self, a)).as_bytes());
                }
                _ => out.extend_from_slice(field),
            }
        }
        out
    }
}

/// `m` rewritten by `f`; kept when the result is no address.
fn again(m: &Mailbox, f: impl Fn(&str) -> String) -> Mailbox {
    Mailbox::parse(&f(&m.to_string())).unwrap_or_else(|_| m.clone())
}

/// `value` with each address replaced by `f(address)`.
fn rewrite_value(value: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = value.to_string();
    // From the end, so that the earlier ranges stay where they are.
    for r in address_ranges(value).into_iter().rev() {
        let new = f(&value[r.clone()]);
        if new != value[r.clone()] {
            out.replace_range(r, &new);
        }
    }
    out
}

/// The header fields of a header section, each with its continuation
/// lines and CRLF (also DKIM's reading of a message).
pub fn fields(head: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        let end = head[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |p| i + p + 1);
        if !matches!(head.get(end), Some(b' ' | b'\t')) {
            out.push(&head[start..end]);
            start = end;
        }
        i = end;
    }
    out
}

/// Where the addresses are in an address-list value (RFC 5322 §3.4):
/// inside `<...>`, else the first word of an item; quotes, comments and
/// group names are skipped.
fn address_ranges(value: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut quoted, mut comment, mut escaped) = (false, 0usize, false);
    let mut angle: Option<usize> = None;
    let mut item_has_angle = false;
    let mut word: Option<Range<usize>> = None;
    let bytes = value.as_bytes();
    let finish = |word: &mut Option<Range<usize>>, has_angle: bool, out: &mut Vec<Range<usize>>| {
        if let (Some(w), false) = (word.take(), has_angle) {
            out.push(w);
        }
    };
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted || comment > 0 => escaped = true,
            b'"' if comment == 0 && angle.is_none() => quoted = !quoted,
            _ if quoted => {}
            b'(' => comment += 1,
            b')' if comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            b'<' => angle = Some(i + 1),
            b'>' => {
                if let Some(s) = angle.take() {
                    let r = trim(value, s..i);
                    if !r.is_empty() {
                        out.push(r);
                    }
                    item_has_angle = true;
                }
            }
            _ if angle.is_some() => {}
            b',' | b';' | b':' => {
                if b == b':' {
                    // A group's name: what came before is no address.
                    word = None;
                } else {
                    finish(&mut word, item_has_angle, &mut out);
                }
                item_has_angle = false;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => match &mut word {
                Some(w) if w.end == i => w.end = i + 1,
                Some(_) => {}
                None => word = Some(i..i + 1),
            },
        }
    }
    finish(&mut word, item_has_angle, &mut out);
    out
}

fn trim(value: &str, r: Range<usize>) -> Range<usize> {
    let s = &value[r.clone()];
    let start = r.start + (s.len() - s.trim_start().len());
    let end = r.end - (s.len() - s.trim_end().len());
    start..end.max(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> Rewriter {
        Rewriter {
            myorigin: "example.test".into(),
            local_domains: vec!["vm".into(), "localhost".into()],
            masquerade_domains: vec!["example.test".into()],
            masquerade_exceptions: ["root".to_string()].into_iter().collect(),
            sender_canonical: Canonical::parse(
                "# senders\nroot admin@example.test\n@vm @example.test\nold@x.test new@x.test\n",
                "s",
            )
            .unwrap(),
            recipient_canonical: Canonical::parse("joe@example.test joe.smith@example.test\n", "r")
                .unwrap(),
        }
    }

    #[test]
    fn senders_are_qualified_mapped_and_masqueraded() {
        let r = rewriter();
        assert_eq!(r.sender("root"), "admin@example.test");
        assert_eq!(r.sender("root@vm"), "admin@example.test");
        assert_eq!(r.sender("cron@vm"), "cron@example.test");
        assert_eq!(r.sender("Old@X.test"), "new@x.test");
        assert_eq!(r.sender("bob@host.example.test"), "bob@example.test");
        // An exception keeps its host name.
        assert_eq!(r.sender("root@host.example.test"), "root@host.example.test");
        assert_eq!(r.sender("bob@elsewhere.test"), "bob@elsewhere.test");
        assert_eq!(r.recipient("joe"), "joe.smith@example.test");
        assert_eq!(r.recipient("ann@vm"), "ann@vm");
    }

    #[test]
    fn only_the_addresses_of_a_field_change() {
        let r = rewriter();
        let head = b"From: \"Root, the admin\" <root@vm> (cron)\r\nTo: joe, ann@vm,\r\n  Undisclosed: a@b.test;\r\nSubject: root@vm stays\r\nReply-To: x@mail.example.test\r\n";
        let got = String::from_utf8(r.header_section(head)).unwrap();
        assert_eq!(
            got,
            "From: \"Root, the admin\" <admin@example.test> (cron)\r\nTo: joe.smith@example.test, ann@vm,\r\n  Undisclosed: a@b.test;\r\nSubject: root@vm stays\r\nReply-To: x@example.test\r\n"
        );
    }

    #[test]
    fn addresses_are_found_in_the_usual_forms() {
        let v = " a@b, \"c, d\" <e@f>, g@h (i, j), <k@l>, (m) n@o";
        let found: Vec<&str> = address_ranges(v).into_iter().map(|r| &v[r]).collect();
        assert_eq!(found, ["a@b", "e@f", "g@h", "k@l", "n@o"]);
    }

    #[test]
    fn bad_canonical_lines_name_their_file_and_line() {
        let e = Canonical::parse("root admin@x.test\nroot\n", "c").unwrap_err();
        assert_eq!(e, "c:2: expected KEY RESULT (e.g. root admin@example.test)");
        assert!(Canonical::parse("root bob\n", "c")
            .unwrap_err()
            .starts_with("c:1: expected user@domain"));
    }
}
