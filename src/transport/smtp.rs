//! Remote delivery: from a domain and its recipients to per-recipient
//! outcomes. Finds the route (the smarthost of `relayhost`, or the MX walk
//! of RFC 5321 §5.1 with RFC 7505 null MX and the "loops back to myself"
//! rule), then runs one SMTP client transaction carrying all the domain's
//! recipients over a blocking `TcpStream`, trying the next address or MX on
//! a refused connection, a time-out or a non-2xx greeting.
//!
//! The dialogue's pure parts (reply assembly, capabilities, the DATA
//! encoder) are in `smtp::client`; the spool and the envelope are the
//! caller's (`delivery`). `Smtp` is this as a `Transport`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{Batch, Delivery, Transport};
use crate::bounce::Action;
use crate::dns::{DnsError, Mx, Resolver};
use crate::envelope::RcptState;
use crate::smtp::client::{
    printable, Capabilities, DataEncoder, MailFacts, MailTransaction, ReplyBuilder, Step,
};
use crate::smtp::reply::{Enhanced, Reply};
use crate::status::Status;

/// Postfix's smtp_mx_address_limit: addresses tried per delivery.
const MAX_ADDRESSES: usize = 5;
/// A reply line longer than this is a broken peer.
const MAX_REPLY_LINE: u64 = 4096;

pub use crate::smtp::client::Outcome;

/// Outcomes plus the host that gave them (for logs and Remote-MTA).
#[derive(Debug, Clone)]
pub struct DomainResult {
    pub outcomes: Vec<Outcome>,
    /// `host[ip]:port` of the server that answered, if any did.
    pub relay: Option<String>,
    /// The host name, for the DSN's Remote-MTA field.
    pub remote_mta: Option<String>,
    /// The host that answered offers DSN (RFC 3461): the requests went
    /// on with the message, and notices are its business now.
    pub dsn: bool,
}

/// `relayhost = [host]:port` (no MX look-up) or `host:port` (MX look-up of
/// host); `smtps:` first for TLS from the first byte (RFC 8314, port 465
/// unless given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayhost {
    pub host: String,
    pub port: u16,
    pub mx_lookup: bool,
    pub implicit_tls: bool,
}

impl Relayhost {
    pub fn parse(s: &str, default_port: u16) -> Option<Relayhost> {
        let (s, implicit_tls, default_port) = match s.strip_prefix("smtps:") {
            Some(rest) => (rest, true, 465),
            None => (s.strip_prefix("smtp:").unwrap_or(s), false, default_port),
        };
        let (host, mx_lookup, rest) = if let Some(r) = s.strip_prefix('[') {
            let end = r.find(']')?;
            (&r[..end], false, &r[end + 1..])
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, true, &s[h.len()..][..p.len() + 1]),
                _ => (s, true, ""),
            }
        };
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => default_port,
            None => return None,
        };
        if host.is_empty() {
            return None;
        }
        Some(Relayhost {
            host: host.to_ascii_lowercase(),
            port,
            mx_lookup,
            implicit_tls,
        })
    }
}

impl std::fmt::Display for Relayhost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.implicit_tls {
            f.write_str("smtps:")?;
        }
        if self.mx_lookup {
            write!(f, "{}:{}", self.host, self.port)
        } else {
            write!(f, "[{}]:{}", self.host, self.port)
        }
    }
}

#[derive(Clone)]
pub struct RelayConfig {
    pub hostname: String,
    pub port: u16,
    pub relayhost: Option<Relayhost>,
    pub connect_timeout: Duration,
    /// `smtp_bind_address` and `smtp_bind_address6`: where outgoing
    /// connections come from (IPv4, IPv6); `None`, the kernel's choice.
    pub bind: (Option<IpAddr>, Option<IpAddr>),
    /// RFC 5321 §4.5.3.2: greeting, MAIL, RCPT and each DATA block (5 min);
    /// the final reply to DATA gets twice this (the RFC's 10 minutes).
    pub command_timeout: Duration,
    /// STARTTLS towards MX hosts (always opportunistic) and the relayhost.
    pub tls: ClientTls,
    /// DANE for MX hosts (the `tls` of a host with TLSA records is made
    /// from them).
    pub dane: Dane,
    /// MTA-STS for MX hosts (RFC 8461), when it is on for the destination.
    pub sts: Option<super::sts::StsConfig>,
    /// User and password for AUTH towards the relayhost (never sent
    /// without TLS).
    pub auth: Option<(String, String)>,
    /// `relay_domains`: their mail is kept, never bounced as a loop, when
    /// no better MX than this host is left.
    pub relay_domains: Vec<String>,
}

/// The client's STARTTLS policy for one delivery.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// `None`: never STARTTLS (`relayhost_tls = none`, or no `tls` feature).
    #[cfg(feature = "tls")]
    pub config: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Defer rather than send in plaintext.
    pub required: bool,
    /// What `config` checks of the server, for the log.
    pub trust: Trust,
}

/// What a TLS session's configuration checked of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trust {
    /// Any certificate (opportunistic TLS, RFC 7435).
    #[default]
    Untrusted,
    /// The chain to tls_ca_file and the host's name.
    Verified,
    /// A DNSSEC-signed TLSA record of the host (RFC 7672).
    Dane,
}

impl Trust {
    #[cfg(feature = "tls")]
    fn label(self) -> &'static str {
        match self {
            Trust::Untrusted => "Untrusted TLS",
            Trust::Verified => "Verified TLS (tls_ca_file)",
            Trust::Dane => "Verified TLS (DANE)",
        }
    }
}

/// DANE towards MX hosts (RFC 7672), as the destination's TLS level says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dane {
    #[default]
    Off,
    /// Where the host's TLSA records are secure (`dane`).
    May,
    /// Or the mail waits (`dane-only`).
    Only,
}

/// The message to send.
pub struct Message<'a> {
    pub from: &'a str,
    /// Header fields sent ahead of the content (the DKIM signatures).
    pub head: &'a [u8],
    pub content: &'a crate::spool::Content,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// RFC 3461 parameters for MAIL and for each recipient (see `MailFacts`).
    pub mail_dsn: &'a str,
    pub rcpt_dsn: &'a [String],
    /// RFC 8689: only over verified TLS, to hosts that offer REQUIRETLS.
    pub requiretls: bool,
}

/// A host to try, with the addresses known for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

/// RFC 5321 §5.1 and RFC 7505: orders MX records for delivery.
/// `Err` carries a permanent failure reason for every recipient.
pub fn order_mx(domain: &str, mut mxs: Vec<Mx>, myhostname: &str) -> Result<Vec<Hop>, Status> {
    if mxs.is_empty() {
        // §5.1: no MX records: the domain itself is the implicit MX.
        return Ok(vec![Hop {
            name: domain.to_ascii_lowercase(),
            addresses: Vec::new(),
        }]);
    }
    let real: Vec<Mx> = mxs
        .iter()
        .filter(|m| !m.exchange.is_empty())
        .cloned()
        .collect();
    if real.is_empty() {
        return Err(Status::new(
            550,
            Enhanced(5, 1, 10),
            format!("<{domain}>: Domain does not accept mail (null MX, RFC 7505)"),
        ));
    }
    mxs = real;
    // Equal preferences in random order (§5.1): sort by (preference, random).
    let seed = RandomState::new();
    let key = |m: &Mx| {
        let mut h = seed.build_hasher();
        h.write(m.exchange.as_bytes());
        (m.preference, h.finish())
    };
    mxs.sort_by_key(key);
    // §5.1: if we are an MX, only better (lower) preferences may be used.
    if let Some(mine) = mxs
        .iter()
        .find(|m| m.exchange.eq_ignore_ascii_case(myhostname))
        .map(|m| m.preference)
    {
        mxs.retain(|m| m.preference < mine);
        if mxs.is_empty() {
            return Err(Status::new(
                554,
                Enhanced(5, 4, 6),
                format!("mail for {domain} loops back to myself"),
            ));
        }
    }
    Ok(mxs
        .into_iter()
        .map(|m| Hop {
            name: m.exchange,
            addresses: Vec::new(),
        })
        .collect())
}

/// The hosts to try for `domain` and whether DNSSEC vouched for them (only
/// asked for DANE), or outcomes that end the attempt now.
fn route(domain: &str, cfg: &RelayConfig, dns: &dyn Resolver) -> Result<(Vec<Hop>, bool), Outcome> {
    let (name, mx_lookup) = match &cfg.relayhost {
        Some(r) => (r.host.as_str(), r.mx_lookup),
        None => (domain, true),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        let hop = Hop {
            name: ip.to_string(),
            addresses: vec![ip],
        };
        return Ok((vec![hop], false));
    }
    if !mx_lookup {
        let hop = Hop {
            name: name.to_string(),
            addresses: Vec::new(),
        };
        return Ok((vec![hop], false));
    }
    let mut secure = false;
    let looked_up = match cfg.dane {
        Dane::Off => dns.mx(name),
        _ => dns.mx_secured(name).map(|s| {
            secure = s.secure;
            s.value
        }),
    };
    let found = match looked_up {
        Ok(mxs) => order_mx(name, mxs, &cfg.hostname).map_err(Outcome::Failed),
        Err(DnsError::NxDomain) => Err(Outcome::Failed(Status::new(
            550,
            Enhanced(5, 1, 2),
            format!("<{name}>: Host or domain name not found"),
        ))),
        Err(DnsError::Temporary(t)) => Err(Outcome::Deferred(Status::new(
            451,
            Enhanced(4, 4, 3),
            format!(
                "<{name}>: Host or domain name lookup failed: {}",
                printable(&t)
            ),
        ))),
    };
    match found {
        // RFC 5321 §5.1: for a domain this host relays for (a backup MX),
        // being the best MX left means waiting for a better one, never a
        // loop to bounce.
        Err(Outcome::Failed(why))
            if why.enhanced == Enhanced(5, 4, 6)
                && cfg.relay_domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) =>
        {
            Err(Outcome::Deferred(Status::new(
                451,
                Enhanced(4, 4, 6),
                format!("mail for {domain}: no MX host better than this one (relay_domains); kept for a later try"),
            )))
        }
        // A relayhost that cannot be found is this host's configuration
        // (or its DNS) at fault, not the recipients' domain: the mail waits
        // to be fixed rather than bouncing (as in Postfix).
        Err(Outcome::Failed(why)) if cfg.relayhost.is_some() => {
            Err(Outcome::Deferred(Status::new(
                451,
                Enhanced(4, 4, 3),
                format!("relayhost {name}: {} {}", why.enhanced, why.text),
            )))
        }
        other => other.map(|hops| (hops, secure)),
    }
}

/// Delivers `msg` to `rcpts` (addresses without brackets) of one domain.
pub fn deliver(
    domain: &str,
    rcpts: &[String],
    msg: &Message,
    cfg: &RelayConfig,
    dns: &dyn Resolver,
) -> DomainResult {
    let all = |o: Outcome| DomainResult {
        outcomes: vec![o; rcpts.len()],
        relay: None,
        remote_mta: None,
        dsn: false,
    };
    let (hops, mx_secure) = match route(domain, cfg, dns) {
        Ok(h) => h,
        Err(o) => return all(o),
    };
    let sts = super::sts::policy_for(domain, cfg);
    let hops = match super::sts::listed(domain, hops, sts.as_deref()) {
        Ok(h) => h,
        Err(why) => return all(Outcome::Deferred(why)),
    };
    let base = cfg;
    let port = cfg.relayhost.as_ref().map_or(cfg.port, |r| r.port);
    let mut last_error = Status::new(451, Enhanced(4, 4, 1), "no address to deliver to");
    let mut permanent_dns_failures = 0;
    let mut tried = 0;
    for hop in &hops {
        // RFC 7672: the host's TLSA records first, then MTA-STS.
        let with = match hop_config(hop, mx_secure, sts.as_deref(), base, dns, msg) {
            Ok(c) => c,
            Err(why) => {
                log::info!("{}: {}", hop.name, why.text);
                last_error = why;
                continue;
            }
        };
        let cfg = with.as_ref().unwrap_or(base);
        let addrs = match hop_addresses(hop, dns) {
            Ok(a) => a,
            Err((why, permanent)) => {
                permanent_dns_failures += usize::from(permanent);
                last_error = why;
                continue;
            }
        };
        for ip in addrs {
            if tried >= MAX_ADDRESSES {
                break;
            }
            tried += 1;
            let addr = SocketAddr::new(ip, port);
            let relay = format!("{}[{}]:{}", hop.name, ip, port);
            match transaction(&hop.name, addr, rcpts, msg, cfg) {
                Ok((outcomes, dsn)) => {
                    return DomainResult {
                        outcomes,
                        relay: Some(relay),
                        remote_mta: Some(hop.name.clone()),
                        dsn,
                    }
                }
                // RFC 5321 §5.1, as Postfix: mail that would come back
                // here bounces (kept, for a domain this host relays for).
                Err(HostError::Loop) => return all(looped(domain, &relay, cfg)),
                Err(e) => {
                    log::info!("{relay}: {e}; trying the next host");
                    last_error = Status::new(451, Enhanced(4, 4, 1), format!("{relay}: {e}"));
                }
            }
        }
    }
    let no_address = tried == 0 && permanent_dns_failures == hops.len();
    let left = no_host_left(domain, &hops, no_address, cfg);
    all(left.unwrap_or_else(|| deferred_or_failed(last_error)))
}

/// The TLS for one host: DANE where its TLSA records say so, else what an
/// MTA-STS policy in enforce mode asks; `Err` skips the host, as it does
/// when REQUIRETLS mail would go without verified TLS (RFC 8689 §4.2.1).
fn hop_config(
    hop: &Hop,
    mx_secure: bool,
    sts: Option<&crate::mta_sts::Policy>,
    base: &RelayConfig,
    dns: &dyn Resolver,
    msg: &Message,
) -> Result<Option<RelayConfig>, Status> {
    let c = super::dane::for_hop(hop, mx_secure, base, dns)?
        .or_else(|| super::sts::verified(sts, base));
    let trust = c.as_ref().unwrap_or(base).tls.trust;
    if msg.requiretls && trust == Trust::Untrusted {
        return Err(Status::new(
            550,
            Enhanced(5, 7, 30),
            format!(
                "REQUIRETLS: no verified TLS to {} (no DANE, MTA-STS or verify)",
                hop.name
            ),
        ));
    }
    Ok(c)
}

/// The last reason when every host was tried: the mail waits, but for
/// REQUIRETLS mail that no host could take with verified TLS, which
/// bounces (5.7.30).
fn deferred_or_failed(last: Status) -> Outcome {
    match last.enhanced == Enhanced(5, 7, 30) {
        true => Outcome::Failed(last),
        false => Outcome::Deferred(last),
    }
}

/// §5.1: the implicit MX has no address at all: the domain cannot receive
/// mail (`None`: the mail waits for a later try).
fn no_host_left(
    domain: &str,
    hops: &[Hop],
    no_address: bool,
    cfg: &RelayConfig,
) -> Option<Outcome> {
    let implicit = cfg.relayhost.is_none() && hops.len() == 1 && hops[0].name == domain;
    (no_address && implicit).then(|| {
        Outcome::Failed(Status::new(
            550,
            Enhanced(5, 1, 2),
            format!("<{domain}>: Host or domain name not found"),
        ))
    })
}

/// The addresses of a hop: given (glue is not used, see `route`) or
/// looked up. `Err` with the reason, and whether the name has no address
/// for good (NXDOMAIN, no A or AAAA record).
fn hop_addresses(hop: &Hop, dns: &dyn Resolver) -> Result<Vec<IpAddr>, (Status, bool)> {
    if !hop.addresses.is_empty() {
        return Ok(hop.addresses.clone());
    }
    let name = &hop.name;
    match dns.addresses(name) {
        Ok(a) if a.is_empty() => Err((
            Status::new(
                451,
                Enhanced(4, 4, 4),
                format!("{name}: no A or AAAA record"),
            ),
            true,
        )),
        Ok(a) => Ok(a),
        Err(DnsError::NxDomain) => Err((
            Status::new(451, Enhanced(4, 4, 4), format!("{name}: Host not found")),
            true,
        )),
        Err(DnsError::Temporary(t)) => Err((
            Status::new(
                451,
                Enhanced(4, 4, 3),
                format!("{name}: address lookup failed: {}", printable(&t)),
            ),
            false,
        )),
    }
}

/// The outcome of a next hop that is this host.
fn looped(domain: &str, relay: &str, cfg: &RelayConfig) -> Outcome {
    let text =
        format!("mail for {domain} loops back to myself ({relay} greeted me with my own hostname)");
    if cfg
        .relay_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(domain))
    {
        return Outcome::Deferred(Status::new(451, Enhanced(4, 4, 6), text));
    }
    Outcome::Failed(Status::new(554, Enhanced(5, 4, 6), text))
}

/// SMTP to the next hop a route names: the domain's MX hosts (or the
/// host of a domain literal), or the relayhost.
pub struct Smtp<'a> {
    pub cfg: RelayConfig,
    pub dns: &'a dyn Resolver,
    /// Next hops (a transport table's, or the relayhost list), tried in
    /// turn: the next one when one could not take the mail (every
    /// recipient deferred). Empty: the domain's MX hosts.
    pub via: &'a [Relayhost],
    /// AUTH credentials per relay host.
    pub credentials: &'a RelayCredentials,
    /// `via` is the configured relayhost list: the one-line credentials
    /// apply to its hosts.
    pub via_relayhost: bool,
    /// `relayhost_failure_limit` (the circuit breaker; 0 = none).
    pub failure_limit: u32,
}

/// AUTH credentials for relay hosts (`relayhost_auth_file`): one
/// `user:password` line for the relayhost, or `HOST user:password` lines
/// (`[host]:port`, or a bare name for any port).
#[derive(Debug, Clone, Default)]
pub struct RelayCredentials {
    default: Option<(String, String)>,
    /// (host, port or 0 for any, user, password)
    per_host: Vec<(String, u16, String, String)>,
}

impl RelayCredentials {
    /// `Err(line)` for a line in neither form.
    pub fn parse(text: &str) -> Result<RelayCredentials, usize> {
        let mut c = RelayCredentials::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (first, rest) = line
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or((line, ""));
            let host_form = !rest.trim().is_empty()
                && rest.contains(':')
                && (first.starts_with('[') || !first.contains(':'));
            if host_form {
                let host = Relayhost::parse(first, 0).ok_or(n + 1)?;
                let (user, password) = rest.trim().split_once(':').ok_or(n + 1)?;
                c.per_host
                    .push((host.host, host.port, user.into(), password.into()));
            } else {
                let (user, password) = line.split_once(':').ok_or(n + 1)?;
                c.default = Some((user.trim().into(), password.trim_end().into()));
            }
        }
        Ok(c)
    }

    /// The credentials for `host`: its own line, else (for a host of the
    /// configured relayhost) the one-line form.
    pub fn for_host(&self, host: &Relayhost, relayhost: bool) -> Option<(String, String)> {
        let own = self
            .per_host
            .iter()
            .find(|(h, port, ..)| *h == host.host && (*port == 0 || *port == host.port));
        match own {
            Some((_, _, user, password)) => Some((user.clone(), password.clone())),
            None if relayhost => self.default.clone(),
            None => None,
        }
    }
}

impl Transport for Smtp<'_> {
    fn deliver(&self, batch: &Batch) -> Delivery {
        let env = batch.env;
        let rcpts: Vec<String> = batch
            .rcpts
            .iter()
            .map(|&i| env.rcpts[i].addr.bare())
            .collect();
        let from = env.from.to_string();
        let (mail_dsn, rcpt_dsn) = crate::dsn::params(env, batch.rcpts);
        let m = Message {
            from: &from,
            head: env.dkim.as_bytes(),
            content: batch.content,
            size: env.size + env.dkim.len() as u64,
            eight_bit: env.body == "8BITMIME",
            smtputf8: env.smtputf8,
            mail_dsn: &mail_dsn,
            rcpt_dsn: &rcpt_dsn,
            requiretls: env.requiretls,
        };
        // For domain literals the "domain" is the address itself.
        let target = batch
            .next_hop
            .trim_start_matches("[ipv6:")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let r = self.deliver_via(target, &rcpts, &m);
        let mut outcomes = r.outcomes.into_iter();
        let states = rcpts
            .iter()
            .map(|_| match outcomes.next() {
                Some(Outcome::Sent(t)) => RcptState::Sent(t),
                Some(Outcome::Deferred(t)) => RcptState::Deferred(t),
                Some(Outcome::Failed(t)) => RcptState::Failed(t),
                None => RcptState::Deferred(Status::new(451, Enhanced(4, 3, 0), "no result")),
            })
            .collect();
        Delivery {
            states,
            relay: r.relay.unwrap_or_else(|| "none".into()),
            remote_mta: r.remote_mta,
            // RFC 3461 §6.2.6.2: a hop without DSN ends our part in it.
            success_notice: (!r.dsn).then_some(Action::Relayed),
        }
    }
}

impl Smtp<'_> {
    /// One transaction by the configured route, or through the hosts of
    /// `via` in turn, the next while every recipient is deferred.
    fn deliver_via(&self, target: &str, rcpts: &[String], m: &Message) -> DomainResult {
        let Some((last, before)) = self.via.split_last() else {
            return deliver(target, rcpts, m, &self.cfg, self.dns);
        };
        let through = |host: &Relayhost| {
            let name = host.to_string();
            if let Some(paused) = super::breaker::refused(&name) {
                return DomainResult {
                    outcomes: vec![Outcome::Deferred(paused); rcpts.len()],
                    relay: None,
                    remote_mta: None,
                    dsn: false,
                };
            }
            // Each host gets its own credentials, never another's.
            let cfg = RelayConfig {
                relayhost: Some(host.clone()),
                auth: self.credentials.for_host(host, self.via_relayhost),
                ..self.cfg.clone()
            };
            let mut r = deliver(target, rcpts, m, &cfg, self.dns);
            super::breaker::record(&name, &mut r.outcomes, self.failure_limit);
            r
        };
        for host in before {
            let r = through(host);
            if !r.outcomes.iter().all(|o| matches!(o, Outcome::Deferred(_))) {
                return r;
            }
            log::info!("{host}: could not take the mail; trying the next host");
        }
        through(last)
    }
}

/// A deferral for want of any route (ENETUNREACH on connect): the link,
/// not the next hop, is down.
pub fn unreachable(s: &Status) -> bool {
    s.text.contains("(os error 101)")
}

/// Why a host took no part in a delivery (and the next one is tried).
#[derive(Debug)]
pub enum HostError {
    /// The TCP connection could not be made (or set up).
    Connect(io::Error),
    /// No reply within the time-out.
    Timeout,
    /// The TLS handshake, or its setup, failed.
    Tls(String),
    /// The connection broke: reset, closed, a write that failed.
    Lost(String),
    /// The peer said something that does not fit (a greeting other than
    /// 220, a refused EHLO or STARTTLS, AUTH refused, a broken reply).
    Protocol(String),
    /// Our side: the queued message could not be read.
    Spool(String),
    /// The host greeted with this host's own name: mail to it loops.
    Loop,
}

impl HostError {
    fn proto(what: impl Into<String>) -> HostError {
        HostError::Protocol(what.into())
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Connect(e) => write!(f, "connect: {e}"),
            HostError::Timeout => f.write_str("timed out reading a reply"),
            HostError::Loop => f.write_str("the host greeted me with my own hostname"),
            HostError::Tls(t)
            | HostError::Lost(t)
            | HostError::Protocol(t)
            | HostError::Spool(t) => f.write_str(t),
        }
    }
}

/// A broken reply line (from the reply assembler) is a protocol error.
impl From<String> for HostError {
    fn from(what: String) -> HostError {
        HostError::Protocol(what)
    }
}

/// The socket side of a client session.
struct Conn {
    io: Io,
    /// The socket under the stream, for time-outs.
    sock: TcpStream,
    timeout: Duration,
    /// The read time-out last set on `sock` (set again only when it changes).
    read_timeout: Option<Duration>,
    /// The last read failed with a reset: the peer closed with data of
    /// ours unread.
    reset: bool,
}

/// Idle sessions kept for the next message to the same server, like
/// Postfix's connection cache (smtp_connection_cache_on_demand): while a
/// destination is busy, each message costs one RSET instead of a TCP
/// connection, a greeting, EHLO (and STARTTLS) and QUIT.
struct Cached {
    key: CacheKey,
    since: Instant,
    conn: Conn,
    caps: Capabilities,
}

/// A cached session is only reused by a delivery that would have set it
/// up the same way: the same address and host name (a certificate is
/// checked for a name, so a session verified for one MX host never
/// carries mail for a destination that asked for another), the same TLS
/// configuration (verifying or not) and the same AUTH user.
#[derive(Clone, PartialEq, Eq)]
struct CacheKey {
    addr: SocketAddr,
    host: String,
    helo: String,
    tls_required: bool,
    tls_offered: bool,
    /// Which client TLS configuration (its address; 0 for none).
    tls_config: usize,
    auth_user: Option<String>,
}

static CACHE: std::sync::Mutex<Vec<Cached>> = std::sync::Mutex::new(Vec::new());
/// Like Postfix's smtp_connection_cache_time_limit.
const CACHE_IDLE: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 32;

fn cache() -> std::sync::MutexGuard<'static, Vec<Cached>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Says goodbye to idle sessions older than `CACHE_IDLE` (the scheduler
/// calls it now and then, so that a quiet server does not hold sockets).
pub fn expire_cached() {
    let now = Instant::now();
    let expired: Vec<Cached> = {
        let mut c = cache();
        let (old, keep): (Vec<Cached>, Vec<Cached>) = c
            .drain(..)
            .partition(|x| now.duration_since(x.since) > CACHE_IDLE);
        *c = keep;
        old
    };
    for mut x in expired {
        let _ = x.conn.send(b"QUIT\r\n");
    }
}

/// How many idle sessions are cached.
pub fn cached_sessions() -> usize {
    cache().len()
}

fn take_cached(key: &CacheKey) -> Option<(Conn, Capabilities)> {
    expire_cached();
    let mut c = cache();
    let i = c.iter().position(|x| x.key == *key)?;
    let x = c.swap_remove(i);
    Some((x.conn, x.caps))
}

/// Ends a session: cached for the next message when every recipient was
/// accepted (a server that refused or deferred anything gets a fresh
/// session next time, as after QUIT), otherwise QUIT.
fn release(mut c: Conn, key: CacheKey, caps: Capabilities, outcomes: &[Outcome]) {
    if outcomes.iter().all(|o| matches!(o, Outcome::Sent(_))) {
        let mut cache = cache();
        if cache.len() < CACHE_MAX {
            cache.push(Cached {
                key,
                since: Instant::now(),
                conn: c,
                caps,
            });
            return;
        }
    }
    let _ = c.send(b"QUIT\r\n");
    let _ = c.reply(Duration::from_secs(5));
}

/// Plaintext, or TLS after STARTTLS.
enum Io {
    Plain(BufReader<TcpStream>),
    #[cfg(feature = "tls")]
    Tls(Box<BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>),
    /// Between the two, for a moment.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Gone,
}

impl Conn {
    fn reader(&mut self) -> Result<&mut dyn BufRead, HostError> {
        match &mut self.io {
            Io::Plain(r) => Ok(r),
            #[cfg(feature = "tls")]
            Io::Tls(r) => Ok(r.as_mut()),
            Io::Gone => Err(HostError::Lost("connection lost during STARTTLS".into())),
        }
    }

    fn writer(&mut self) -> Result<&mut dyn Write, HostError> {
        match &mut self.io {
            Io::Plain(r) => Ok(r.get_mut()),
            #[cfg(feature = "tls")]
            Io::Tls(r) => Ok(r.get_mut()),
            Io::Gone => Err(HostError::Lost("connection lost during STARTTLS".into())),
        }
    }

    fn reply(&mut self, timeout: Duration) -> Result<Reply, HostError> {
        if self.read_timeout != Some(timeout) {
            self.sock
                .set_read_timeout(Some(timeout))
                .map_err(|e| HostError::Lost(e.to_string()))?;
            self.read_timeout = Some(timeout);
        }
        let deadline = Instant::now() + timeout;
        let mut b = ReplyBuilder::default();
        loop {
            if Instant::now() > deadline {
                return Err(HostError::Timeout);
            }
            let mut line = Vec::new();
            let n = self
                .reader()?
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut line)
                .map_err(|e| {
                    if is_timeout(&e) {
                        HostError::Timeout
                    } else {
                        self.reset = e.kind() == io::ErrorKind::ConnectionReset;
                        HostError::Lost(e.to_string())
                    }
                })?;
            if n == 0 {
                return Err(HostError::Lost("lost connection".into()));
            }
            if line.last() != Some(&b'\n') {
                return Err(HostError::Protocol("reply line too long".into()));
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(r) = b.push(text.trim_end_matches(['\r', '\n']))? {
                return Ok(r);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        let w = self.writer()?;
        w.write_all(bytes)
            .and_then(|()| w.flush())
            .map_err(|e| HostError::Lost(format!("write failed: {e}")))
    }

    /// RFC 3207: after the 220, the TLS handshake on the same socket. Any
    /// reply bytes the server sent early are dropped with the old reader.
    #[cfg(feature = "tls")]
    fn start_tls(
        &mut self,
        cfg: std::sync::Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<String, HostError> {
        let Io::Plain(r) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err(HostError::Tls("TLS already active".into()));
        };
        let name = crate::tls::server_name(host).map_err(HostError::Tls)?;
        let conn = rustls::ClientConnection::new(cfg, name)
            .map_err(|e| HostError::Tls(format!("TLS setup: {e}")))?;
        let mut tls = rustls::StreamOwned::new(conn, r.into_inner());
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| HostError::Tls(format!("TLS handshake: {e}")))?;
        }
        let what = format!(
            "{:?} {:?}",
            tls.conn
                .protocol_version()
                .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
            tls.conn
                .negotiated_cipher_suite()
                .map(|s| s.suite())
                .unwrap_or(rustls::CipherSuite::Unknown(0))
        );
        self.io = Io::Tls(Box::new(BufReader::new(tls)));
        Ok(what)
    }

    fn command(&mut self, line: &str) -> Result<Reply, HostError> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply(self.timeout)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One SMTP transaction at `addr`. `Err` means "this host did not take
/// part" (refused, timed out, broke off): try the next one.
fn transaction(
    host: &str,
    addr: SocketAddr,
    rcpts: &[String],
    msg: &Message,
    cfg: &RelayConfig,
) -> Result<(Vec<Outcome>, bool), HostError> {
    match attempt(host, addr, rcpts, msg, cfg, true) {
        // Opportunistic TLS: a server that offers STARTTLS but cannot
        // complete a handshake with us (old protocol versions, no common
        // cipher) still gets the mail, in plaintext, as Postfix does at
        // level "may". Never when TLS is required, or to log in
        // (credentials only go inside TLS).
        Err(HostError::Tls(e))
            if !cfg.tls.required
                && cfg.auth.is_none()
                && !cfg.relayhost.as_ref().is_some_and(|r| r.implicit_tls) =>
        {
            log::info!(
                "{host}[{}]: TLS handshake failed; trying again without TLS ({e})",
                addr.ip()
            );
            attempt(host, addr, rcpts, msg, cfg, false)
        }
        other => other,
    }
}

/// `transaction`, with STARTTLS when `use_tls` and the configuration has
/// it. The outcomes, and whether the server offered DSN.
fn attempt(
    host: &str,
    addr: SocketAddr,
    rcpts: &[String],
    msg: &Message,
    cfg: &RelayConfig,
    use_tls: bool,
) -> Result<(Vec<Outcome>, bool), HostError> {
    #[cfg(not(feature = "tls"))]
    let _ = use_tls;
    #[cfg(feature = "tls")]
    let tls_offered = use_tls && cfg.tls.config.is_some();
    #[cfg(not(feature = "tls"))]
    let tls_offered = false;
    #[cfg(feature = "tls")]
    let tls_config = cfg
        .tls
        .config
        .as_ref()
        .map_or(0, |c| std::sync::Arc::as_ptr(c) as usize);
    #[cfg(not(feature = "tls"))]
    let tls_config = 0;
    let key = CacheKey {
        addr,
        host: host.to_ascii_lowercase(),
        helo: cfg.hostname.clone(),
        tls_required: cfg.tls.required,
        tls_offered,
        tls_config,
        auth_user: cfg.auth.as_ref().map(|(u, _)| u.clone()),
    };
    if let Some((mut c, caps)) = take_cached(&key) {
        // Postfix's check too: RSET says whether the cached session is
        // still usable, and starts from a clean state (RFC 5321 §4.1.1.5);
        // with PIPELINING it goes in the same group as MAIL (RFC 2920 §3.1).
        match dialogue(&mut c, rcpts, msg, &caps, true) {
            Ok(outcomes) => {
                let dsn = caps.dsn;
                release(c, key, caps, &outcomes);
                return Ok((outcomes, dsn));
            }
            // Gone, or broke off: a new connection tries once more, as the
            // next host would.
            Err(_) => {
                let _ = c.send(b"QUIT\r\n");
            }
        }
    }
    let (mut c, caps) = open_session(host, addr, cfg, use_tls)?;
    if let Some((user, password)) = &cfg.auth {
        authenticate(&mut c, &caps, user, password)?;
    }
    #[cfg(not(feature = "tls"))]
    if cfg.tls.required {
        return Err(HostError::proto(format!(
            "{host}: TLS is required but this satchel was built without the tls feature"
        )));
    }
    match dialogue(&mut c, rcpts, msg, &caps, false) {
        Ok(outcomes) => {
            let dsn = caps.dsn;
            release(c, key, caps, &outcomes);
            Ok((outcomes, dsn))
        }
        Err(e) => {
            let _ = c.send(b"QUIT\r\n");
            let _ = c.reply(Duration::from_secs(5));
            Err(e)
        }
    }
}

/// A TCP connection to `addr`, from the bind address of its family when
/// one is set.
fn connect(addr: SocketAddr, cfg: &RelayConfig) -> io::Result<TcpStream> {
    let from = if addr.is_ipv4() {
        cfg.bind.0
    } else {
        cfg.bind.1
    };
    match from {
        Some(ip) => crate::os::connect_from(ip, addr, cfg.connect_timeout),
        None => TcpStream::connect_timeout(&addr, cfg.connect_timeout),
    }
}

/// A new session with `addr`: connected, greeted, EHLO (HELO for an old
/// server), STARTTLS when the policy and the server allow it (RFC 3207),
/// and the capabilities in force.
fn open_session(
    host: &str,
    addr: SocketAddr,
    cfg: &RelayConfig,
    use_tls: bool,
) -> Result<(Conn, Capabilities), HostError> {
    let stream = connect(addr, cfg).map_err(HostError::Connect)?;
    stream
        .set_write_timeout(Some(cfg.command_timeout))
        .map_err(HostError::Connect)?;
    let _ = stream.set_nodelay(true);
    let sock = stream.try_clone().map_err(HostError::Connect)?;
    let mut c = Conn {
        io: Io::Plain(BufReader::new(stream)),
        sock,
        timeout: cfg.command_timeout,
        read_timeout: None,
        reset: false,
    };
    let implicit_tls = cfg.relayhost.as_ref().is_some_and(|r| r.implicit_tls);
    if implicit_tls {
        tls_first(&mut c, host, addr, cfg)?;
    }
    let greeting = c.reply(cfg.command_timeout)?;
    if greeting.code != 220 {
        return Err(refused("greeting", &greeting));
    }
    // A next hop that greets with our own name is this host (a transport
    // table or relayhost pointing back here): sending would loop.
    let name = greeting
        .lines
        .first()
        .and_then(|l| l.split_whitespace().next());
    if name.is_some_and(|n| n.eq_ignore_ascii_case(&cfg.hostname)) {
        return Err(HostError::Loop);
    }
    let ehlo = c.command(&format!("EHLO {}", cfg.hostname))?;
    let caps = if ehlo.code == 250 {
        Capabilities::from_ehlo(&ehlo)
    } else {
        let helo = c.command(&format!("HELO {}", cfg.hostname))?;
        if helo.code != 250 {
            return Err(refused("HELO", &helo));
        }
        Capabilities::default()
    };
    #[cfg(feature = "tls")]
    let caps = match cfg.tls.config.clone().filter(|_| use_tls && !implicit_tls) {
        Some(tls) => start_tls(&mut c, caps, tls, host, addr, cfg)?,
        None => caps,
    };
    #[cfg(not(feature = "tls"))]
    let _ = (use_tls, host);
    Ok((c, caps))
}

/// RFC 8314: TLS from the first byte (an `smtps:` next hop), before the
/// greeting; the policy's certificate checks apply as with STARTTLS.
fn tls_first(
    c: &mut Conn,
    host: &str,
    addr: SocketAddr,
    cfg: &RelayConfig,
) -> Result<(), HostError> {
    #[cfg(feature = "tls")]
    {
        let tls =
            cfg.tls.config.clone().ok_or_else(|| {
                HostError::Tls("smtps: needs TLS, and relayhost_tls is none".into())
            })?;
        let what = c.start_tls(tls, host)?;
        log::info!("{host}[{}]: TLS established: {what}", addr.ip());
        Ok(())
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (c, addr, cfg);
        Err(HostError::Tls(format!(
            "{host}: smtps: needs TLS, and this satchel was built without the tls feature"
        )))
    }
}

/// STARTTLS when offered (required by the policy or not), and the
/// capabilities said again inside TLS (RFC 3207 §4.2: forget what was
/// learned before).
#[cfg(feature = "tls")]
fn start_tls(
    c: &mut Conn,
    caps: Capabilities,
    tls: std::sync::Arc<rustls::ClientConfig>,
    host: &str,
    addr: SocketAddr,
    cfg: &RelayConfig,
) -> Result<Capabilities, HostError> {
    if !caps.starttls {
        if cfg.tls.required {
            return Err(HostError::proto("STARTTLS is required but not offered"));
        }
        return Ok(caps);
    }
    let r = c.command("STARTTLS")?;
    if r.code != 220 {
        if cfg.tls.required {
            return Err(refused("STARTTLS refused", &r));
        }
        return Ok(caps);
    }
    let what = c.start_tls(tls, host)?;
    let trust = cfg.tls.trust.label();
    log::info!("{host}[{}]: TLS established: {what}; {trust}", addr.ip());
    let ehlo = c.command(&format!("EHLO {}", cfg.hostname))?;
    if ehlo.code != 250 {
        return Err(refused("EHLO after STARTTLS", &ehlo));
    }
    Ok(Capabilities::from_ehlo(&ehlo))
}

/// A reply that ends the session with this host.
fn refused(what: &str, r: &Reply) -> HostError {
    HostError::proto(format!("{what}: {}", printable(&r.one_line())))
}

/// RFC 4954 as a client: PLAIN, else LOGIN; only inside TLS, so the
/// password never crosses the network in the clear.
fn authenticate(
    c: &mut Conn,
    caps: &Capabilities,
    user: &str,
    password: &str,
) -> Result<(), HostError> {
    #[cfg(feature = "tls")]
    let encrypted = matches!(c.io, Io::Tls(_));
    #[cfg(not(feature = "tls"))]
    let encrypted = false;
    if !encrypted {
        return Err(HostError::proto(
            "will not send AUTH credentials without TLS",
        ));
    }
    use crate::smtp::base64::encode;
    let r = if caps.auth.iter().any(|m| m == "PLAIN") {
        c.command(&format!(
            "AUTH PLAIN {}",
            encode(format!("\0{user}\0{password}").as_bytes())
        ))?
    } else if caps.auth.iter().any(|m| m == "LOGIN") {
        let r = c.command("AUTH LOGIN")?;
        if r.code != 334 {
            return Err(HostError::proto(format!(
                "AUTH LOGIN: {}",
                printable(&r.one_line())
            )));
        }
        let r = c.command(&encode(user.as_bytes()))?;
        if r.code != 334 {
            return Err(HostError::proto(format!(
                "AUTH LOGIN: {}",
                printable(&r.one_line())
            )));
        }
        c.command(&encode(password.as_bytes()))?
    } else {
        return Err(HostError::proto(
            "the relayhost offers no AUTH mechanism satchel knows (PLAIN, LOGIN)",
        ));
    };
    if r.code != 235 {
        return Err(HostError::proto(format!(
            "authentication failed: {}",
            printable(&r.one_line())
        )));
    }
    Ok(())
}

/// One mail transaction on an open session (`smtp::client::MailTransaction`
/// decides, this moves the bytes). `rset`: a reused session, checked with
/// RSET first (`Err` unless it says 250).
fn dialogue(
    c: &mut Conn,
    rcpts: &[String],
    msg: &Message,
    caps: &Capabilities,
    rset: bool,
) -> Result<Vec<Outcome>, HostError> {
    let facts = MailFacts {
        from: msg.from,
        rcpts,
        size: msg.size,
        eight_bit: msg.eight_bit,
        smtputf8: msg.smtputf8,
        // Only looked at when it matters: the message is read for it.
        needs_smtputf8: msg.smtputf8
            && !caps.smtputf8
            && needs_smtputf8(msg.from, rcpts, msg.content),
        lmtp: false,
        mail_dsn: msg.mail_dsn,
        rcpt_dsn: msg.rcpt_dsn,
        requiretls: msg.requiretls,
    };
    let (mut t, mut step) = MailTransaction::start(&facts, caps, rset);
    loop {
        step = match step {
            Step::Send(bytes) => match c.send(&bytes) {
                Ok(()) => read_reply(c, &mut t, c.timeout)?,
                // A closing command that cannot be sent costs nothing:
                // the outcomes are known (see `MailTransaction::lost`).
                Err(e) => return t.lost(&e.to_string()).ok_or(e),
            },
            Step::Read => read_reply(c, &mut t, c.timeout)?,
            Step::SendContent if t.chunking() => chunked(c, &mut t, msg)?,
            Step::SendContent => {
                send_content(c, msg.head, msg.content)?;
                // RFC 5321 §4.5.3.2.6: ten minutes for the final reply.
                read_reply(c, &mut t, c.timeout * 2)?
            }
            Step::Done(outcomes) => return Ok(outcomes),
            Step::Broken(why) => return Err(HostError::proto(why)),
        };
    }
}

/// The next reply for the transaction. A read that fails ends it with the
/// outcomes it knows (after the final dot: deferred, RFC 1047), or as a
/// host that took no part: always when the connection was reset after the
/// dot (the server closed it with our data unread, so it cannot have
/// taken the message).
fn read_reply(c: &mut Conn, t: &mut MailTransaction, timeout: Duration) -> Result<Step, HostError> {
    match c.reply(timeout) {
        Ok(r) => Ok(t.reply(&r)),
        Err(e) if c.reset && t.awaits_final_reply() => Err(e),
        Err(e) => t.lost(&e.to_string()).map(Step::Done).ok_or(e),
    }
}

fn needs_smtputf8(from: &str, rcpts: &[String], content: &crate::spool::Content) -> bool {
    if !from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()) {
        return true;
    }
    let mut head = Vec::new();
    let read = content.open().and_then(|f| {
        f.take(crate::bounce::MAX_RETURNED_HEADERS as u64)
            .read_to_end(&mut head)
    });
    read.is_err() || !crate::bounce::header_section(&head).is_ascii()
}

/// RFC 3030: the content as BDAT chunks, all sent before any reply is
/// read (the server reads on while its replies wait), then a reply for
/// each: the first that is not 250 (the server refused the message there)
/// or else the last chunk's is the message's.
fn chunked(c: &mut Conn, t: &mut MailTransaction, msg: &Message) -> Result<Step, HostError> {
    let before_last = send_chunks(c, msg.head, msg.content)?;
    let mut refusal = None;
    for _ in 0..before_last {
        match c.reply(c.timeout) {
            Ok(r) if r.code == 250 || refusal.is_some() => {}
            Ok(r) => refusal = Some(r),
            Err(e) => return t.lost(&e.to_string()).map(Step::Done).ok_or(e),
        }
    }
    let last = match c.reply(c.timeout * 2) {
        Ok(r) => r,
        Err(e) if refusal.is_none() => return t.lost(&e.to_string()).map(Step::Done).ok_or(e),
        Err(_) => Reply::new(451, Enhanced(4, 4, 2), "no reply to the last chunk"),
    };
    Ok(t.reply(&refusal.unwrap_or(last)))
}

/// Sends the content in BDAT chunks of about 64 KiB, the last one with
/// LAST (RFC 3030 §2); returns how many came before it.
fn send_chunks(
    c: &mut Conn,
    head: &[u8],
    content: &crate::spool::Content,
) -> Result<usize, HostError> {
    let spool = |e: io::Error| HostError::Spool(format!("cannot read the queued message: {e}"));
    let mut f = content.open().map_err(spool)?;
    let mut enc = DataEncoder::chunked();
    let size = usize::try_from(content.len).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; size.clamp(512, 64 * 1024)];
    let mut chunk = Vec::with_capacity(buf.len() + buf.len() / 8 + head.len() + 8);
    enc.encode(head, &mut chunk);
    let mut sent = 0;
    loop {
        let n = f.read(&mut buf).map_err(spool)?;
        if n == 0 {
            break;
        }
        enc.encode(&buf[..n], &mut chunk);
        if chunk.len() >= 64 * 1024 {
            send_chunk(c, &chunk, false)?;
            chunk.clear();
            sent += 1;
        }
    }
    enc.finish(&mut chunk);
    send_chunk(c, &chunk, true)?;
    Ok(sent)
}

fn send_chunk(c: &mut Conn, chunk: &[u8], last: bool) -> Result<(), HostError> {
    let verb = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    );
    let mut bytes = Vec::with_capacity(verb.len() + chunk.len());
    bytes.extend_from_slice(verb.as_bytes());
    bytes.extend_from_slice(chunk);
    c.send(&bytes)
}

fn send_content(
    c: &mut Conn,
    head: &[u8],
    content: &crate::spool::Content,
) -> Result<(), HostError> {
    let mut f = content
        .open()
        .map_err(|e| HostError::Spool(format!("cannot read the queued message: {e}")))?;
    let mut enc = DataEncoder::default();
    // Buffers the size of the message, up to 64 KiB; a small message goes
    // out in one write with its final dot.
    let size = usize::try_from(content.len).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; size.clamp(512, 64 * 1024)];
    let mut out = Vec::with_capacity(buf.len() + buf.len() / 8 + head.len() + 8);
    enc.encode(head, &mut out);
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| HostError::Spool(format!("cannot read the queued message: {e}")))?;
        if n == 0 {
            break;
        }
        enc.encode(&buf[..n], &mut out);
        if out.len() >= 64 * 1024 {
            c.send(&out)?;
            out.clear();
        }
    }
    enc.finish(&mut out);
    c.send(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(p: u16, e: &str) -> Mx {
        Mx {
            preference: p,
            exchange: e.into(),
        }
    }

    fn names(h: &[Hop]) -> Vec<&str> {
        h.iter().map(|h| h.name.as_str()).collect()
    }

    struct NoSuchName;

    impl Resolver for NoSuchName {
        fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
            Err(DnsError::NxDomain)
        }
        fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
            Err(DnsError::NxDomain)
        }
    }

    fn relay_config(relayhost: Option<&str>) -> RelayConfig {
        RelayConfig {
            hostname: "me.test".into(),
            port: 25,
            relayhost: relayhost.and_then(|r| Relayhost::parse(r, 25)),
            connect_timeout: Duration::from_secs(1),
            bind: (None, None),
            command_timeout: Duration::from_secs(1),
            tls: ClientTls::default(),
            dane: Dane::Off,
            sts: None,
            auth: None,
            relay_domains: vec!["relayed.test".into()],
        }
    }

    /// A resolver that says this host is the best MX of every domain.
    struct BestMxIsMe;

    impl Resolver for BestMxIsMe {
        fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
            Ok(vec![mx(10, "me.test"), mx(20, "worse.test")])
        }
        fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
            Err(DnsError::NxDomain)
        }
    }

    #[test]
    fn a_relayed_domain_whose_best_mx_is_this_host_waits_instead_of_bouncing() {
        let cfg = relay_config(None);
        let kept = route("Relayed.test", &cfg, &BestMxIsMe);
        assert!(
            matches!(&kept, Err(Outcome::Deferred(t)) if t.enhanced == Enhanced(4, 4, 6)),
            "{kept:?}"
        );
        // Any other domain: the loop bounces, as before (RFC 5321 §5.1).
        let looped = route("other.test", &cfg, &BestMxIsMe);
        assert!(
            matches!(&looped, Err(Outcome::Failed(t)) if t.enhanced == Enhanced(5, 4, 6)),
            "{looped:?}"
        );
    }

    #[test]
    fn a_domain_that_does_not_exist_bounces_but_a_missing_relayhost_defers() {
        let to_domain = route("gone.test", &relay_config(None), &NoSuchName);
        assert!(
            matches!(&to_domain, Err(Outcome::Failed(t)) if t.to_string().starts_with("550 5.1.2")),
            "{to_domain:?}"
        );
        let via = route(
            "d.test",
            &relay_config(Some("smart.gone.test")),
            &NoSuchName,
        );
        assert!(
            matches!(&via, Err(Outcome::Deferred(t))
                if t.to_string().starts_with("451 4.4.3 relayhost smart.gone.test: 5.1.2 ")),
            "{via:?}"
        );
    }

    #[test]
    fn mx_records_are_sorted_by_preference() {
        let h = order_mx(
            "d.test",
            vec![mx(20, "b.d.test"), mx(10, "a.d.test"), mx(30, "c.d.test")],
            "me.test",
        )
        .unwrap();
        assert_eq!(names(&h), vec!["a.d.test", "b.d.test", "c.d.test"]);
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let h = order_mx("d.test", vec![mx(10, "a"), mx(10, "b"), mx(10, "c")], "me").unwrap();
            seen.insert(names(&h).join(","));
        }
        assert!(seen.len() > 1, "always the same order: {seen:?}");
    }

    #[test]
    fn no_mx_means_the_domain_itself() {
        assert_eq!(
            names(&order_mx("D.test", vec![], "me").unwrap()),
            vec!["d.test"]
        );
    }

    #[test]
    fn null_mx_fails_with_5_1_10() {
        assert!(order_mx("d.test", vec![mx(0, "")], "me")
            .unwrap_err()
            .to_string()
            .contains("5.1.10"));
    }

    #[test]
    fn only_better_mx_than_ourselves_are_used() {
        let h = order_mx(
            "d.test",
            vec![mx(10, "a"), mx(20, "me.test"), mx(30, "c")],
            "ME.test",
        )
        .unwrap();
        assert_eq!(names(&h), vec!["a"]);
        let e = order_mx("d.test", vec![mx(10, "me.test"), mx(20, "c")], "me.test").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("5.4.6") && e.contains("loops back to myself"));
    }

    #[test]
    fn relay_credentials_go_to_their_own_host_only() {
        let c = RelayCredentials::parse(
            "# per host\n[smart.test]:587 edge:pa55\nbackup.test other:pw:with:colons\n",
        )
        .unwrap();
        let host = |s: &str| Relayhost::parse(s, 25).unwrap();
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(
            c.for_host(&host("[smart.test]:587"), true),
            pair("edge", "pa55")
        );
        assert_eq!(
            c.for_host(&host("[smart.test]:25"), true),
            None,
            "another port"
        );
        assert_eq!(
            c.for_host(&host("smtps:[backup.test]:465"), false),
            pair("other", "pw:with:colons")
        );
        let one = RelayCredentials::parse("edge:pa 55\n").unwrap();
        assert_eq!(
            one.for_host(&host("[any.test]"), true),
            pair("edge", "pa 55")
        );
        assert_eq!(
            one.for_host(&host("[any.test]"), false),
            None,
            "only the relayhost's"
        );
        assert_eq!(RelayCredentials::parse("ok:1\nnonsense\n").unwrap_err(), 2);
    }

    #[test]
    fn relayhost_forms_parse() {
        assert_eq!(
            Relayhost::parse("[127.0.0.4]:2525", 25),
            Some(Relayhost {
                host: "127.0.0.4".into(),
                port: 2525,
                mx_lookup: false,
                implicit_tls: false
            })
        );
        assert_eq!(
            Relayhost::parse("smart.example", 25),
            Some(Relayhost {
                host: "smart.example".into(),
                port: 25,
                mx_lookup: true,
                implicit_tls: false
            })
        );
        assert_eq!(
            Relayhost::parse("smart.example:587", 25),
            Some(Relayhost {
                host: "smart.example".into(),
                port: 587,
                mx_lookup: true,
                implicit_tls: false
            })
        );
        assert_eq!(Relayhost::parse("[::1]:26", 25).map(|r| r.port), Some(26));
        let tls = Relayhost::parse("smtps:[mail.example]", 25).unwrap();
        assert_eq!(
            (tls.port, tls.implicit_tls, tls.mx_lookup),
            (465, true, false)
        );
        assert_eq!(tls.to_string(), "smtps:[mail.example]:465");
        assert_eq!(
            Relayhost::parse("smtp:[a]:26", 25).map(|r| r.implicit_tls),
            Some(false)
        );
        assert_eq!(Relayhost::parse("[x]:notaport", 25), None);
        assert_eq!(Relayhost::parse("", 25), None);
    }
}
