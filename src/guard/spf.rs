//! SPF (RFC 7208): may this client address send mail for this domain?
//! `check_host` (§4) fetches the domain's `v=spf1` record, evaluates its
//! mechanisms left to right (§5) with macros expanded (§7), follows
//! `include` and `redirect`, and keeps to the limits of §4.6.4: ten terms
//! that cost a DNS look-up, two look-ups that find nothing ("void"), ten
//! address look-ups per `mx`, ten names per `ptr`. Any DNS answer it gets is
//! untrusted input: a record that breaks a rule is a PermError, never a
//! panic or an endless walk.

use std::fmt;
use std::net::IpAddr;

use crate::dns::{DnsError, Resolver};

/// §4.6.4: terms that cause DNS queries, per evaluation.
const MAX_LOOKUPS: u32 = 10;
/// §4.6.4: DNS queries that return no answer (NXDOMAIN or no records).
const MAX_VOID: u32 = 2;
/// §4.6.4: names an `mx` may give, and PTR names a `ptr` may try.
const MAX_NAMES: usize = 10;
/// §4.5: a record longer than this is not one we evaluate.
const MAX_RECORD: usize = 8192;

/// The results of §2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        })
    }
}

/// What is checked: the client, the identity's domain, the sender
/// (`postmaster@helo` for the HELO identity, §2.3) and the HELO name.
pub struct Query<'a> {
    pub ip: IpAddr,
    pub sender: &'a str,
    pub helo: &'a str,
    /// This host's name, for `%{r}` in explanations.
    pub receiver: &'a str,
}

/// The verdict: the result, and for a Fail the explanation the domain
/// gives (§6.2), for an error what went wrong; else empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: SpfResult,
    pub detail: String,
}

/// `check_host(ip, domain, sender)` of §4.
pub fn check_host(q: &Query, domain: &str, dns: &dyn Resolver) -> Verdict {
    let mut eval = Eval {
        q,
        dns,
        lookups: 0,
        voids: 0,
    };
    match eval.check(domain, 0) {
        Ok((result, detail)) => Verdict { result, detail },
        Err(Stop::Temp(why)) => Verdict {
            result: SpfResult::TempError,
            detail: why,
        },
        Err(Stop::Perm(why)) => Verdict {
            result: SpfResult::PermError,
            detail: why,
        },
    }
}

/// Why an evaluation stopped early.
#[derive(Debug)]
enum Stop {
    Temp(String),
    Perm(String),
}

fn perm<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Perm(why.into()))
}

struct Eval<'a> {
    q: &'a Query<'a>,
    dns: &'a dyn Resolver,
    lookups: u32,
    voids: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// One directive of a record: a qualifier and a mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip(IpAddr, u8),
    Exists(String),
}

/// A parsed record: directives in order, then the two modifiers we use.
#[derive(Debug, Default)]
struct Record {
    directives: Vec<(Qualifier, Mechanism)>,
    redirect: Option<String>,
    exp: Option<String>,
}

impl Eval<'_> {
    fn check(&mut self, domain: &str, depth: u32) -> Result<(SpfResult, String), Stop> {
        // Every include and redirect costs a look-up, so this only guards
        // the stack against a bug, not against a record.
        if depth > MAX_LOOKUPS + 1 {
            return perm("too deep");
        }
        let Some(text) = self.record(domain)? else {
            return Ok((SpfResult::None, String::new()));
        };
        let record = parse(&text)?;
        for (qualifier, mechanism) in &record.directives {
            if self.matches(mechanism, domain, depth)? {
                let result = qualifier.result();
                let detail = match (result, &record.exp) {
                    (SpfResult::Fail, Some(exp)) => self.explain(exp, domain),
                    _ => None,
                };
                return Ok((result, detail.unwrap_or_default()));
            }
        }
        match &record.redirect {
            Some(target) => {
                self.count_lookup()?;
                let target = self.expand(target, domain, false)?;
                match self.check(&target, depth + 1)? {
                    (SpfResult::None, _) => perm(format!("redirect to {target}: no SPF record")),
                    other => Ok(other),
                }
            }
            None => Ok((SpfResult::Neutral, String::new())),
        }
    }

    /// The one `v=spf1` record of `domain` (§4.5), if any.
    fn record(&mut self, domain: &str) -> Result<Option<String>, Stop> {
        if !valid_domain(domain) {
            return Ok(None);
        }
        let txt = match self.dns.txt(domain) {
            Ok(t) => t,
            Err(DnsError::NxDomain) => return Ok(None),
            Err(DnsError::Temporary(why)) => return Err(Stop::Temp(why)),
        };
        let spf: Vec<String> = txt
            .into_iter()
            .filter(|t| {
                let v = t.get(..6).unwrap_or("");
                v.eq_ignore_ascii_case("v=spf1") && (t.len() == 6 || t.as_bytes()[6] == b' ')
            })
            .collect();
        match spf.as_slice() {
            [] => Ok(None),
            [one] if one.len() <= MAX_RECORD => Ok(Some(one.clone())),
            [_] => perm(format!("the SPF record of {domain} is too long")),
            _ => perm(format!("{domain} has more than one SPF record")),
        }
    }

    fn count_lookup(&mut self) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return perm("more than 10 DNS look-ups");
        }
        Ok(())
    }

    /// Addresses of `name` of the client's family; NXDOMAIN and NODATA are
    /// void look-ups (§4.6.4), which count.
    fn ips(&mut self, name: &str) -> Result<Vec<IpAddr>, Stop> {
        let found = match self.dns.ips(name, self.q.ip.is_ipv6()) {
            Ok(a) => a,
            Err(DnsError::NxDomain) => Vec::new(),
            Err(DnsError::Temporary(why)) => return Err(Stop::Temp(why)),
        };
        if found.is_empty() {
            self.void()?;
        }
        Ok(found)
    }

    fn void(&mut self) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID {
            return perm("more than 2 void DNS look-ups");
        }
        Ok(())
    }

    fn matches(&mut self, m: &Mechanism, domain: &str, depth: u32) -> Result<bool, Stop> {
        let target = |e: &mut Self, spec: &Option<String>| match spec {
            Some(s) => e.expand(s, domain, false),
            None => Ok(domain.to_string()),
        };
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip(net, len) => Ok(in_network(self.q.ip, *net, *len)),
            Mechanism::Include(spec) => {
                self.count_lookup()?;
                let t = self.expand(spec, domain, false)?;
                match self.check(&t, depth + 1)?.0 {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(Stop::Temp(format!("include:{t}"))),
                    _ => perm(format!("include:{t} has no usable SPF record")),
                }
            }
            Mechanism::A(spec, v4, v6) => {
                self.count_lookup()?;
                let t = target(self, spec)?;
                let len = self.prefix(*v4, *v6);
                Ok(self
                    .ips(&t)?
                    .into_iter()
                    .any(|a| in_network(self.q.ip, a, len)))
            }
            Mechanism::Mx(spec, v4, v6) => {
                self.count_lookup()?;
                let t = target(self, spec)?;
                self.mx_matches(&t, self.prefix(*v4, *v6))
            }
            Mechanism::Ptr(spec) => {
                self.count_lookup()?;
                let t = target(self, spec)?;
                self.ptr_matches(&t)
            }
            Mechanism::Exists(spec) => {
                self.count_lookup()?;
                let t = self.expand(spec, domain, false)?;
                // §5.7: an A query whatever the client's family.
                let found = match self.dns.ips(&t, false) {
                    Ok(a) => a,
                    Err(DnsError::NxDomain) => Vec::new(),
                    Err(DnsError::Temporary(why)) => return Err(Stop::Temp(why)),
                };
                if found.is_empty() {
                    self.void()?;
                }
                Ok(!found.is_empty())
            }
        }
    }

    fn prefix(&self, v4: u8, v6: u8) -> u8 {
        if self.q.ip.is_ipv6() {
            v6
        } else {
            v4
        }
    }

    /// §5.4: the addresses of at most ten MX names.
    fn mx_matches(&mut self, name: &str, len: u8) -> Result<bool, Stop> {
        let mx = match self.dns.mx(name) {
            Ok(m) => m,
            Err(DnsError::NxDomain) => Vec::new(),
            Err(DnsError::Temporary(why)) => return Err(Stop::Temp(why)),
        };
        if mx.is_empty() {
            self.void()?;
            return Ok(false);
        }
        if mx.len() > MAX_NAMES {
            return perm(format!("{name} has more than 10 MX records"));
        }
        for host in mx.iter().filter(|m| !m.exchange.is_empty()) {
            let addrs = match self.dns.ips(&host.exchange, self.q.ip.is_ipv6()) {
                Ok(a) => a,
                Err(DnsError::NxDomain) => continue,
                Err(DnsError::Temporary(why)) => return Err(Stop::Temp(why)),
            };
            if addrs.into_iter().any(|a| in_network(self.q.ip, a, len)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// §5.5: a validated PTR name of the client at or under `target`. A
    /// failing reverse look-up is no match, not an error.
    fn ptr_matches(&mut self, target: &str) -> Result<bool, Stop> {
        let names = match self.dns.ptr(self.q.ip) {
            Ok(n) => n,
            Err(DnsError::NxDomain) => {
                self.void()?;
                return Ok(false);
            }
            Err(DnsError::Temporary(_)) => return Ok(false),
        };
        let target = target.trim_end_matches('.').to_ascii_lowercase();
        for name in names.iter().take(MAX_NAMES) {
            let under = name == &target || name.ends_with(&format!(".{target}"));
            let validated = || {
                self.dns
                    .ips(name, self.q.ip.is_ipv6())
                    .is_ok_and(|a| a.contains(&self.q.ip))
            };
            if under && validated() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// §6.2: the explanation of a Fail, or None when there is none to use.
    fn explain(&mut self, spec: &str, domain: &str) -> Option<String> {
        let name = self.expand(spec, domain, false).ok()?;
        let txt = self.dns.txt(&name).ok()?;
        let [one] = txt.as_slice() else { return None };
        let text = self.expand(one, domain, true).ok()?;
        Some(
            text.chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(200)
                .collect(),
        )
    }

    /// §7: the macro-string `spec` with its macros expanded; `exp` allows
    /// the letters of explanations (c, r, t). A domain-spec longer than 253
    /// octets loses labels on the left (§7.3).
    fn expand(&self, spec: &str, domain: &str, exp: bool) -> Result<String, Stop> {
        let out = expand(spec, &self.macros(domain), exp)?;
        if exp || out.len() <= 253 {
            return Ok(out);
        }
        let mut rest = out.as_str();
        while rest.len() > 253 {
            match rest.split_once('.') {
                Some((_, r)) => rest = r,
                None => return perm("expanded domain-spec too long"),
            }
        }
        Ok(rest.to_string())
    }

    fn macros<'s>(&'s self, domain: &'s str) -> Macros<'s> {
        Macros { q: self.q, domain }
    }
}

struct Macros<'a> {
    q: &'a Query<'a>,
    domain: &'a str,
}

impl Macros<'_> {
    /// The value of macro `letter` (lower case), or None if unknown.
    fn value(&self, letter: char, exp: bool) -> Option<String> {
        let (local, sender_domain) = match self.q.sender.rsplit_once('@') {
            Some((l, d)) => (l, d),
            None => ("postmaster", self.q.sender),
        };
        Some(match letter {
            's' => self.q.sender.to_string(),
            'l' => local.to_string(),
            'o' => sender_domain.to_string(),
            'd' => self.domain.to_string(),
            'i' => dotted(self.q.ip),
            // §7.3: "unknown" is always a valid answer for %{p}, and the
            // one that costs no look-ups.
            'p' => "unknown".to_string(),
            'v' => if self.q.ip.is_ipv6() {
                "ip6"
            } else {
                "in-addr"
            }
            .to_string(),
            'h' => self.q.helo.to_string(),
            'c' if exp => self.q.ip.to_string(),
            'r' if exp => self.q.receiver.to_string(),
            't' if exp => crate::time::unix_now().to_string(),
            _ => return None,
        })
    }
}

/// `%{i}`: dotted octets, or dotted nibbles for IPv6 (§7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let nibbles: Vec<String> = a
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            nibbles.join(".")
        }
    }
}

/// §7.1 macro-string expansion.
fn expand(spec: &str, m: &Macros, exp: bool) -> Result<String, Stop> {
    let mut out = String::new();
    let mut rest = spec;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.chars().next() {
            Some('%') => out.push('%'),
            Some('_') => out.push(' '),
            Some('-') => out.push_str("%20"),
            Some('{') => {
                let Some(end) = after.find('}') else {
                    return perm("unterminated macro");
                };
                out.push_str(&expand_one(&after[1..end], m, exp)?);
                rest = &after[end + 1..];
                continue;
            }
            _ => return perm(format!("bad macro in '{spec}'")),
        }
        rest = &after[1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One `%{...}`: a letter, transformers (digits, `r`), delimiters.
fn expand_one(body: &str, m: &Macros, exp: bool) -> Result<String, Stop> {
    let mut chars = body.chars();
    let letter = chars.next().ok_or(Stop::Perm("empty macro".into()))?;
    let Some(value) = m.value(letter.to_ascii_lowercase(), exp) else {
        return perm(format!("unknown macro letter '{letter}'"));
    };
    let rest = chars.as_str();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let keep = match &rest[..digits_end] {
        "" => None,
        d => match d.parse::<usize>() {
            Ok(0) | Err(_) => return perm("bad macro transformer"),
            Ok(n) => Some(n),
        },
    };
    let rest = &rest[digits_end..];
    let (reverse, delims) = match rest.strip_prefix(['r', 'R']) {
        Some(d) => (true, d),
        None => (false, rest),
    };
    if !delims.chars().all(|c| ".-+,/_=".contains(c)) {
        return perm(format!("bad macro delimiter in '%{{{body}}}'"));
    }
    let delims = if delims.is_empty() { "." } else { delims };
    let mut parts: Vec<&str> = value.split(|c| delims.contains(c)).collect();
    if reverse {
        parts.reverse();
    }
    if let Some(n) = keep {
        parts = parts.split_off(parts.len().saturating_sub(n));
    }
    let joined = parts.join(".");
    Ok(if letter.is_ascii_uppercase() {
        url_escape(&joined)
    } else {
        joined
    })
}

/// §7.3: upper-case macro letters are URL-escaped (RFC 3986 unreserved kept).
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn in_network(client: IpAddr, net: IpAddr, len: u8) -> bool {
    let client = match client {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    match (client, net) {
        (IpAddr::V4(c), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(c) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(c), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(c) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// §4.3: a domain we may ask about (a name of labels, at most 253).
fn valid_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && d.contains('.')
}

/// §4.6: the terms of a record, after `v=spf1`.
fn parse(text: &str) -> Result<Record, Stop> {
    let mut r = Record::default();
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        if let Some((name, value)) = modifier(term) {
            let slot = match name.to_ascii_lowercase().as_str() {
                "redirect" => &mut r.redirect,
                "exp" => &mut r.exp,
                _ => continue, // §6: unknown modifiers are ignored
            };
            if slot.replace(value.to_string()).is_some() {
                return perm(format!("'{name}' twice"));
            }
            continue;
        }
        r.directives.push(directive(term)?);
    }
    // §6.1: redirect is ignored when the record has an `all`.
    if r.directives.iter().any(|(_, m)| *m == Mechanism::All) {
        r.redirect = None;
    }
    Ok(r)
}

/// `name=value` with a modifier name (§4.6.1), else None.
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut c = name.chars();
    let ok = c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || "-_.".contains(x));
    ok.then_some((name, value))
}

fn directive(term: &str) -> Result<(Qualifier, Mechanism), Stop> {
    let (q, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let (name, arg) = match rest.find([':', '/']) {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let spec = |arg: Option<&str>| -> Result<String, Stop> {
        match arg.and_then(|a| a.strip_prefix(':')) {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => perm(format!("'{term}' needs a domain")),
        }
    };
    let m = match name.to_ascii_lowercase().as_str() {
        "all" if arg.is_none() => Mechanism::All,
        "include" => Mechanism::Include(spec(arg)?),
        "exists" => Mechanism::Exists(spec(arg)?),
        "a" | "mx" => {
            let (domain, v4, v6) = dual_cidr(arg.unwrap_or(""), term)?;
            match name.eq_ignore_ascii_case("a") {
                true => Mechanism::A(domain, v4, v6),
                false => Mechanism::Mx(domain, v4, v6),
            }
        }
        "ptr" => Mechanism::Ptr(match arg {
            None => None,
            a => Some(spec(a)?),
        }),
        "ip4" | "ip6" => ip_mechanism(name, arg, term)?,
        _ => return perm(format!("unknown mechanism '{term}'")),
    };
    Ok((q, m))
}

/// `[:domain][/cidr4][//cidr6]` of `a` and `mx` (§5.3, §5.4).
fn dual_cidr(arg: &str, term: &str) -> Result<(Option<String>, u8, u8), Stop> {
    let (spec, cidr) = match arg.find('/') {
        Some(i) => (&arg[..i], &arg[i..]),
        None => (arg, ""),
    };
    let domain = match spec.strip_prefix(':') {
        Some("") => return perm(format!("'{term}': empty domain")),
        Some(d) => Some(d.to_string()),
        None if spec.is_empty() => None,
        None => return perm(format!("bad term '{term}'")),
    };
    let bad = || Stop::Perm(format!("bad prefix length in '{term}'"));
    let (v4, v6) = match cidr.strip_prefix("//") {
        Some(six) => (32, prefix_len(six, 128).ok_or_else(bad)?),
        None => match cidr.strip_prefix('/') {
            None => (32, 128),
            Some(rest) => match rest.split_once("//") {
                Some((four, six)) => (
                    prefix_len(four, 32).ok_or_else(bad)?,
                    prefix_len(six, 128).ok_or_else(bad)?,
                ),
                None => (prefix_len(rest, 32).ok_or_else(bad)?, 128),
            },
        },
    };
    Ok((domain, v4, v6))
}

/// A prefix length of at most `max`, without leading zeros (§5.6 ABNF).
fn prefix_len(s: &str, max: u8) -> Option<u8> {
    let n = s.parse::<u8>().ok().filter(|n| *n <= max)?;
    (s == "0" || !s.starts_with('0')).then_some(n)
}

fn ip_mechanism(name: &str, arg: Option<&str>, term: &str) -> Result<Mechanism, Stop> {
    let bad = || Stop::Perm(format!("bad network in '{term}'"));
    let text = arg.and_then(|a| a.strip_prefix(':')).ok_or_else(bad)?;
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let v6 = name.eq_ignore_ascii_case("ip6");
    let ip: IpAddr = match v6 {
        true => IpAddr::V6(addr.parse().map_err(|_| bad())?),
        false => IpAddr::V4(addr.parse().map_err(|_| bad())?),
    };
    let max = if v6 { 128 } else { 32 };
    let len = match len {
        None => max,
        Some(l) => prefix_len(l, max).ok_or_else(bad)?,
    };
    Ok(Mechanism::Ip(ip, len))
}

/// The `Received-SPF:` header field of RFC 7208 §9.1, folded.
pub fn received_spf(v: &Verdict, q: &Query, identity: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '"' | '\\' | '(' | ')' => '?',
                c if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .take(200)
            .collect()
    };
    let (who, ip) = (clean(q.sender), q.ip);
    let comment = match v.result {
        SpfResult::Pass => format!("domain of {who} designates {ip} as permitted sender"),
        SpfResult::Fail | SpfResult::SoftFail => {
            format!("domain of {who} does not designate {ip} as permitted sender")
        }
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {who}"),
        SpfResult::None => format!("domain of {who} does not provide an SPF record"),
        SpfResult::TempError | SpfResult::PermError => {
            format!(
                "error in processing during lookup of {who}: {}",
                clean(&v.detail)
            )
        }
    };
    format!(
        "Received-SPF: {} ({}: {comment})\r\n\tclient-ip={ip}; envelope-from=\"{who}\"; helo={};\r\n\tidentity={identity}; receiver={};\r\n",
        v.result,
        q.receiver,
        clean(q.helo).replace([' ', ';'], "?"),
        q.receiver
    )
}

#[cfg(test)]
mod tests;
