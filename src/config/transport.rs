//! The transport table (`transport_file`), in the spirit of Postfix's
//! transport(5): which next hop a recipient's mail takes, instead of the
//! domain's MX hosts or the relayhost. Keys, most specific first:
//! `user@domain`, `domain`, `.domain` (its subdomains, the nearest parent
//! first), `*`. Next hops: `local`, `smtp:` (or `smtps:`, TLS from the
//! first byte) and a comma-separated list of `[host]:port` (no MX
//! look-up) or `host[:port]` (the host's MX records),
//! tried in turn when one cannot take the mail, `lmtp:unix:/path` or
//! `lmtp:[host]:port` (a delivery agent), `error:[x.y.z] text`
//! (bounce now) and `defer:text` (keep queued). Parsing is pure; a bad
//! line is `FILE:LINE: what is wrong`. Look-ups are hash look-ups.

use std::collections::HashMap;

use crate::address::Mailbox;
use crate::smtp::reply::{split_enhanced, Enhanced};
use crate::status::Status;
use crate::transport::smtp::Relayhost;

/// Where the table sends a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// This host's mailboxes.
    Local,
    /// SMTP to these hosts, the next one tried when one cannot take it.
    Smtp(Vec<Relayhost>),
    /// LMTP to a delivery agent (`lmtp:unix:/path`, `lmtp:[host]:port`).
    Lmtp(crate::transport::lmtp::LmtpTarget),
    /// Bounce at once (`error:`).
    Error(Status),
    /// Keep queued (`defer:`).
    Defer(Status),
}

#[derive(Debug, Clone, Default)]
pub struct TransportTable {
    /// `user@domain`, `domain`, `.domain` and `*` keys, lower case.
    entries: HashMap<String, NextHop>,
}

impl TransportTable {
    /// Reads the table at `path`.
    pub fn load(path: &std::path::Path) -> Result<TransportTable, String> {
        read(path, TransportTable::parse)
    }

    /// `key next-hop` lines; `#` comments and blank lines skipped.
    pub fn parse(text: &str, file: &str) -> Result<TransportTable, String> {
        let entries = key_value_lines(text, file, "key next-hop", |key, hop| {
            if !valid_key(key) {
                return Err(format!("'{key}' is not user@domain, domain, .domain or *"));
            }
            next_hop(hop)
        })?;
        Ok(TransportTable { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `rcpt`, most specific first.
    pub fn lookup(&self, rcpt: &Mailbox) -> Option<&NextHop> {
        if self.entries.is_empty() {
            return None;
        }
        let domain = rcpt.domain.to_lowercase();
        let address = format!("{}@{domain}", rcpt.local.to_ascii_lowercase());
        if let Some(h) = self
            .entries
            .get(&address)
            .or_else(|| self.entries.get(&domain))
        {
            return Some(h);
        }
        // `.example.test` covers a.example.test and b.a.example.test.
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(h) = self.entries.get(&format!(".{parent}")) {
                return Some(h);
            }
            rest = parent;
        }
        self.entries.get("*")
    }
}

/// Reads and parses the table at `path`.
fn read<T>(
    path: &std::path::Path,
    parse: fn(&str, &str) -> Result<T, String>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// `key value` lines (`#` comments and blank lines skipped) into a map,
/// keys in lower case, each value read by `value`; `FILE:LINE: what is
/// wrong` for a bad line or a key listed twice.
fn key_value_lines<V>(
    text: &str,
    file: &str,
    form: &str,
    value: impl Fn(&str, &str) -> Result<V, String>,
) -> Result<HashMap<String, V>, String> {
    let mut entries = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what: String| format!("{file}:{}: {what}", n + 1);
        let (key, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| err(format!("expected '{form}', found '{line}'")))?;
        let key = key.to_ascii_lowercase();
        let v = value(&key, rest.trim()).map_err(err)?;
        if entries.insert(key.clone(), v).is_some() {
            return Err(err(format!("'{key}' is listed twice")));
        }
    }
    Ok(entries)
}

fn valid_key(key: &str) -> bool {
    let name = |d: &str| {
        !d.is_empty()
            && d.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    match key.rsplit_once('@') {
        _ if key == "*" => true,
        Some((local, domain)) => !local.is_empty() && name(domain),
        None => name(key.strip_prefix('.').unwrap_or(key)),
    }
}

/// One next hop: `local`, `smtp:HOSTS`, `lmtp:WHERE`, `error:TEXT`,
/// `defer:TEXT`.
fn next_hop(text: &str) -> Result<NextHop, String> {
    let (scheme, rest) = text.split_once(':').unwrap_or((text, ""));
    match scheme {
        "local" if rest.is_empty() => Ok(NextHop::Local),
        "smtp" => smtp_hosts(rest, false).map(NextHop::Smtp),
        "smtps" => smtp_hosts(rest, true).map(NextHop::Smtp),
        "error" => Ok(NextHop::Error(status(rest, 550, 5))),
        "defer" => Ok(NextHop::Defer(status(rest, 451, 4))),
        "lmtp" => crate::transport::lmtp::LmtpTarget::parse(rest).map(NextHop::Lmtp),
        _ => Err(format!(
            "unknown next hop '{text}' (expected local, smtp:, smtps:, lmtp:, error: or defer:)"
        )),
    }
}

/// `[a.test]:25, b.test:2525, c.test`: each with port 25 unless given
/// (465, and TLS from the first byte, for `smtps:`).
fn smtp_hosts(list: &str, implicit_tls: bool) -> Result<Vec<Relayhost>, String> {
    let scheme = if implicit_tls { "smtps:" } else { "smtp:" };
    let hosts: Vec<Relayhost> = list
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            Relayhost::parse(&format!("{scheme}{h}"), 25)
                .ok_or_else(|| format!("bad host '{h}' (expected [host]:port, host:port or host)"))
        })
        .collect::<Result<_, _>>()?;
    if hosts.is_empty() {
        return Err("smtp: needs a host".into());
    }
    Ok(hosts)
}

/// `5.1.1 text` or `text`: the reason given, with the class's codes.
fn status(text: &str, code: u16, class: u8) -> Status {
    let text = text.trim();
    match split_enhanced(text) {
        (Some(e), rest) if e.0 == class => Status::new(code, e, rest.trim()),
        _ => Status::new(code, Enhanced(class, 0, 0), text),
    }
}

/// The relay per envelope sender (`sender_relay_file`): `user@domain`
/// or `@domain`, then a relayhost (or a comma-separated list, as for
/// `smtp:`), overriding `relayhost` for that sender's remote mail.
#[derive(Debug, Clone, Default)]
pub struct SenderRelays {
    entries: HashMap<String, Vec<Relayhost>>,
}

impl SenderRelays {
    pub fn load(path: &std::path::Path) -> Result<SenderRelays, String> {
        read(path, SenderRelays::parse)
    }

    pub fn parse(text: &str, file: &str) -> Result<SenderRelays, String> {
        let entries = key_value_lines(text, file, "sender relayhost", |key, hosts| {
            let (local, domain) = key.rsplit_once('@').unwrap_or(("", ""));
            if domain.is_empty()
                || !valid_key(domain)
                || (local.is_empty() && !key.starts_with('@'))
            {
                return Err(format!("'{key}' is not user@domain or @domain"));
            }
            let (list, tls) = match hosts.strip_prefix("smtps:") {
                Some(rest) => (rest, true),
                None => (hosts.strip_prefix("smtp:").unwrap_or(hosts), false),
            };
            smtp_hosts(list, tls)
        })?;
        Ok(SenderRelays { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The relay for mail from `sender`: its address, else its domain.
    pub fn lookup(&self, sender: &Mailbox) -> Option<&[Relayhost]> {
        if self.entries.is_empty() {
            return None;
        }
        let domain = sender.domain.to_lowercase();
        let address = format!("{}@{domain}", sender.local.to_ascii_lowercase());
        self.entries
            .get(&address)
            .or_else(|| self.entries.get(&format!("@{domain}")))
            .map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> TransportTable {
        TransportTable::parse(text, "t").unwrap()
    }

    fn hop<'a>(t: &'a TransportTable, addr: &str) -> Option<&'a NextHop> {
        t.lookup(&Mailbox::parse(addr).unwrap())
    }

    #[test]
    fn the_most_specific_key_wins() {
        let t = table(
            "# comment\nboss@example.test local\nexample.test smtp:[10.0.0.1]:2525\n\
             .example.test smtp:inner.test\n* defer:4.3.2 not now\n",
        );
        assert_eq!(hop(&t, "Boss@Example.test"), Some(&NextHop::Local));
        let smtp = |h: &str| NextHop::Smtp(vec![Relayhost::parse(h, 25).unwrap()]);
        assert_eq!(hop(&t, "x@example.test"), Some(&smtp("[10.0.0.1]:2525")));
        assert_eq!(hop(&t, "x@a.b.example.test"), Some(&smtp("inner.test")));
        let Some(NextHop::Defer(s)) = hop(&t, "x@other.test") else {
            panic!()
        };
        assert_eq!(s.to_string(), "451 4.3.2 not now");
        assert_eq!(table("").lookup(&Mailbox::parse("x@y.test").unwrap()), None);
    }

    #[test]
    fn next_hops_parse_with_their_lists_and_statuses() {
        let t = table("a.test smtp:[dead.test]:25, [live.test]:2525\nb.test error:5.1.1 gone\nc.test error:no such domain here\n");
        let Some(NextHop::Smtp(hosts)) = hop(&t, "x@a.test") else {
            panic!()
        };
        assert_eq!(hosts.len(), 2);
        assert_eq!((hosts[1].host.as_str(), hosts[1].port), ("live.test", 2525));
        let Some(NextHop::Error(s)) = hop(&t, "x@b.test") else {
            panic!()
        };
        assert_eq!(s.to_string(), "550 5.1.1 gone");
        let Some(NextHop::Error(s)) = hop(&t, "x@c.test") else {
            panic!()
        };
        assert_eq!(s.to_string(), "550 5.0.0 no such domain here");
    }

    #[test]
    fn a_sender_gets_its_own_relay_by_address_then_domain() {
        let r = SenderRelays::parse(
            "boss@corp.test smtps:[mail.provider.test]:465\n@corp.test [relay.corp.test]:587, [backup.corp.test]:587\n",
            "s",
        )
        .unwrap();
        let of = |a: &str| r.lookup(&Mailbox::parse(a).unwrap()).map(|h| h.to_vec());
        let boss = of("Boss@corp.test").unwrap();
        assert!(boss[0].implicit_tls && boss[0].port == 465);
        assert_eq!(of("x@corp.test").unwrap().len(), 2);
        assert_eq!(of("x@other.test"), None);
        let e = SenderRelays::parse("nobody [h]:25\n", "s").unwrap_err();
        assert_eq!(e, "s:1: 'nobody' is not user@domain or @domain");
    }

    #[test]
    fn bad_lines_name_their_file_and_line() {
        for (text, what) in [
            ("a.test\n", "t:1: expected 'key next-hop'"),
            (
                "ok.test local\na.test smtp:[h]:99999\n",
                "t:2: bad host '[h]:99999'",
            ),
            ("a.test ftp:x\n", "t:1: unknown next hop 'ftp:x'"),
            ("a.test lmtp:[h]:0\n", "t:1: 'lmtp:[h]:0': bad port '0'"),
            (
                "a.test lmtp:unix:run/lmtp\n",
                "t:1: 'lmtp:unix:run/lmtp': the socket path must be absolute",
            ),
            ("a_b.test local\n", "t:1: 'a_b.test' is not user@domain"),
            (
                "a.test local\nA.test local\n",
                "t:2: 'a.test' is listed twice",
            ),
            ("a.test smtp:\n", "t:1: smtp: needs a host"),
        ] {
            let e = TransportTable::parse(text, "t").unwrap_err();
            assert!(e.starts_with(what), "{text:?}: {e}");
        }
    }
}

/// A TLS security level towards a destination (Postfix's
/// smtp_tls_security_level and smtp_tls_policy_maps names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLevel {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, any certificate; plaintext otherwise (RFC 7435).
    May,
    /// STARTTLS or defer; any certificate.
    Encrypt,
    /// STARTTLS or defer, and the certificate must verify for the MX host
    /// name against tls_ca_file.
    Verify,
    /// DANE (RFC 7672) where an MX host's TLSA records are DNSSEC-signed:
    /// TLS they verify, or defer; `may` for hosts without them.
    Dane,
    /// DANE or defer.
    DaneOnly,
}

/// Postfix's smtp_dns_support_level (the values satchel has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsSupport {
    Enabled,
    /// DNSSEC records asked for on every look-up; `may` becomes `dane`.
    Dnssec,
}

impl TlsLevel {
    pub fn parse(word: &str) -> Option<TlsLevel> {
        Some(match word {
            "none" => TlsLevel::None,
            "may" => TlsLevel::May,
            "encrypt" => TlsLevel::Encrypt,
            "verify" | "secure" => TlsLevel::Verify,
            "dane" => TlsLevel::Dane,
            "dane-only" => TlsLevel::DaneOnly,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
            TlsLevel::Dane => "dane",
            TlsLevel::DaneOnly => "dane-only",
        }
    }
}

/// `tls_policy_file`: `domain level` or `.domain level` (its subdomains)
/// lines, as Postfix's smtp_tls_policy_maps keyed by next-hop domain.
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    entries: HashMap<String, TlsLevel>,
}

impl TlsPolicy {
    pub fn load(path: &std::path::Path) -> Result<TlsPolicy, String> {
        read(path, TlsPolicy::parse)
    }

    pub fn parse(text: &str, file: &str) -> Result<TlsPolicy, String> {
        let entries = key_value_lines(text, file, "domain level", |key, rest| {
            let name = key.strip_prefix('.').unwrap_or(key);
            if name.is_empty() || name.contains(['@', '[', ']', '*']) {
                return Err(format!("'{key}' is not a domain or .domain"));
            }
            let mut words = rest.split_whitespace();
            let level = words.next().and_then(TlsLevel::parse).ok_or_else(|| {
                format!("'{rest}': the level is none, may, encrypt, verify, dane or dane-only")
            })?;
            match words.next() {
                Some(attr) => Err(format!("'{attr}': attributes are not supported")),
                None => Ok(level),
            }
        })?;
        Ok(TlsPolicy { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The level for mail to `domain`: its own line, else that of the
    /// nearest parent with a `.parent` line.
    pub fn lookup(&self, domain: &str) -> Option<TlsLevel> {
        let domain = domain.to_ascii_lowercase();
        if let Some(l) = self.entries.get(&domain) {
            return Some(*l);
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(l) = self.entries.get(&format!(".{parent}")) {
                return Some(*l);
            }
            rest = parent;
        }
        None
    }
}

#[cfg(test)]
mod tls_policy_tests {
    use super::*;

    #[test]
    fn levels_by_domain_and_parent() {
        let p = TlsPolicy::parse(
            "# comment\nbank.test verify\n.gov.test encrypt\nold.test none\ndane.test dane-only\n",
            "p",
        )
        .unwrap();
        assert_eq!(p.lookup("BANK.test"), Some(TlsLevel::Verify));
        assert_eq!(
            p.lookup("mail.bank.test"),
            None,
            "bank.test is not .bank.test"
        );
        assert_eq!(p.lookup("a.b.gov.test"), Some(TlsLevel::Encrypt));
        assert_eq!(p.lookup("gov.test"), None);
        assert_eq!(p.lookup("old.test"), Some(TlsLevel::None));
        assert_eq!(p.lookup("dane.test"), Some(TlsLevel::DaneOnly));
        for (bad, why) in [
            ("x.test maybe\n", "p:1: 'maybe': the level"),
            (
                "x.test verify match=nexthop\n",
                "p:1: 'match=nexthop': attributes",
            ),
            ("[1.2.3.4] may\n", "p:1: '[1.2.3.4]' is not a domain"),
            ("x.test may\nx.test none\n", "p:2: 'x.test' is listed twice"),
            ("lonely\n", "p:1: expected 'domain level'"),
        ] {
            let e = TlsPolicy::parse(bad, "p").unwrap_err();
            assert!(e.starts_with(why), "{bad:?}: {e}");
        }
    }
}
