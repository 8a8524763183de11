//! The checks of a client and its mail that need the network or shared
//! state: DNS blocklists, forward-confirmed reverse DNS, the sender's
//! domain, rate limits. The session (`smtp::session`) names the stage
//! (`MailChecks` after MAIL); the connection loop in `receive` runs these
//! and hands the verdict back, which the session gives at RCPT, so that
//! postmaster can still be reached (RFC 5321 §4.5.1) and the log shows who
//! was refused what, as Postfix's `smtpd_delay_reject`.
//!
//! Clients in `relay_networks` and authenticated ones are never checked.
//! A DNS failure never refuses mail for good: a blocklist that does not
//! answer lists nobody, a sender domain that cannot be looked up gets 450.

pub mod anvil;
pub mod dmarc;
pub mod dnsbl;
pub mod milter;
pub mod psl;
pub mod spf;

mod data;
pub use data::{claims_to_be, DataVerdict, Verifier};

use std::net::IpAddr;
use std::sync::Arc;

use crate::address::{Domain, ReversePath};
use crate::config::Config;
use crate::dns::{DnsError, Resolver};
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::session::MailChecks;

/// The network checks in force and the resolver they ask.
pub struct Guard {
    dnsbl: Vec<dnsbl::Zone>,
    unknown_client: bool,
    unknown_sender_domain: bool,
    spf: SpfPolicy,
    hostname: String,
    dkim_verify: bool,
    dmarc: DmarcPolicy,
    quarantine: Quarantine,
    authserv_id: String,
    dns: Option<Arc<dyn Resolver>>,
    /// The milters, when there are any.
    pub milters: Option<milter::Config>,
}

/// `dmarc_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Tag,
    Honour,
}

/// `dmarc_quarantine`: hold the message, or add a header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quarantine {
    Hold,
    Header(String),
}

impl Quarantine {
    pub fn parse(text: &str) -> Result<Quarantine, String> {
        if text == "hold" {
            return Ok(Quarantine::Hold);
        }
        let name_ok =
            |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        match text.split_once(':') {
            Some((n, v)) if name_ok(n) && v.chars().all(|c| c == ' ' || c.is_ascii_graphic()) => {
                Ok(Quarantine::Header(format!("{n}:{v}")))
            }
            _ => Err("expected hold or a header field such as X-Spam-Flag: YES".into()),
        }
    }
}

impl std::fmt::Display for Quarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quarantine::Hold => f.write_str("hold"),
            Quarantine::Header(h) => f.write_str(h),
        }
    }
}

/// `spf_policy`: what SPF (RFC 7208) does with the client's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfPolicy {
    /// Not checked.
    None,
    /// Checked; the result goes into a Received-SPF: header field.
    Tag,
    /// Tagged, and a Fail (`-all`) refused with 550 5.7.23 (RFC 7372).
    RejectFail,
}

/// The verdict of the MAIL stage: a refusal for the recipients, trace
/// header fields for the message, and SPF's result and domain.
#[derive(Debug, Default)]
pub struct Verdict {
    pub refusal: Option<Reply>,
    pub trace: String,
    pub spf: Option<(spf::SpfResult, String)>,
}

/// What one connection learned about its client (asked once).
#[derive(Default)]
pub struct ClientFacts {
    verdict: Option<Option<Reply>>,
}

impl Guard {
    /// The checks `cfg` turns on; the resolver is asked only when one is.
    pub fn new(cfg: &Config, dns: Option<Arc<dyn Resolver>>) -> Guard {
        Guard {
            dnsbl: cfg.dnsbl_zones.clone(),
            unknown_client: cfg.reject_unknown_client_hostname,
            unknown_sender_domain: cfg.reject_unknown_sender_domain,
            spf: cfg.spf_policy,
            hostname: cfg.hostname.clone(),
            dkim_verify: cfg.dkim_verify,
            dmarc: cfg.dmarc_policy,
            quarantine: cfg.dmarc_quarantine.clone(),
            authserv_id: cfg
                .authserv_id
                .clone()
                .unwrap_or_else(|| cfg.hostname.clone()),
            dns,
            milters: (!cfg.milters.is_empty()).then(|| milter::Config {
                targets: cfg.milters.clone(),
                default_action: cfg.milter_default_action,
                connect_timeout: cfg.milter_connect_timeout,
                command_timeout: cfg.milter_command_timeout,
                content_timeout: cfg.milter_content_timeout,
                hostname: cfg.hostname.clone(),
            }),
        }
    }

    /// Whether any check needs DNS.
    pub fn needs_dns(cfg: &Config) -> bool {
        !cfg.dnsbl_zones.is_empty()
            || cfg.reject_unknown_client_hostname
            || cfg.reject_unknown_sender_domain
            || cfg.spf_policy != SpfPolicy::None
            || cfg.dkim_verify
            || cfg.dmarc_policy != DmarcPolicy::None
    }

    /// The verdict on the transaction that `req` describes: the client's
    /// (blocklists, reverse DNS; once per connection), then the sender's
    /// domain, then SPF.
    pub fn mail_stage(&self, req: &MailChecks, facts: &mut ClientFacts) -> Verdict {
        let Some(dns) = self.dns.as_deref() else {
            return Verdict::default();
        };
        let client = facts
            .verdict
            .get_or_insert_with(|| self.client_verdict(req.ip, dns));
        if client.is_some() {
            return Verdict {
                refusal: client.clone(),
                ..Verdict::default()
            };
        }
        let refusal = match &req.from {
            ReversePath::Mailbox(m) if self.unknown_sender_domain => match &m.domain {
                Domain::Name(d) => sender_domain(&m.to_string(), d, dns),
                _ => None,
            },
            _ => None,
        };
        match refusal {
            Some(r) => Verdict {
                refusal: Some(r),
                ..Verdict::default()
            },
            None => self.spf_stage(req, dns),
        }
    }

    /// SPF of the MAIL FROM identity, or of HELO for the null sender
    /// (RFC 7208 §2.4), as spf_policy says.
    fn spf_stage(&self, req: &MailChecks, dns: &dyn Resolver) -> Verdict {
        let for_results = self.dkim_verify || self.dmarc != DmarcPolicy::None;
        if self.spf == SpfPolicy::None && !for_results {
            return Verdict::default();
        }
        let (sender, identity) = match &req.from {
            ReversePath::Mailbox(m) => (m.to_string(), "mailfrom"),
            ReversePath::Null => (format!("postmaster@{}", req.helo), "helo"),
        };
        let domain = sender
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let q = spf::Query {
            ip: req.ip,
            sender: &sender,
            helo: &req.helo,
            receiver: &self.hostname,
        };
        let v = spf::check_host(&q, &domain, dns);
        log::info!("spf: [{}] {identity} <{sender}>: {}", req.ip, v.result);
        let result = Some((v.result, domain.clone()));
        if self.spf == SpfPolicy::None {
            return Verdict {
                spf: result,
                ..Verdict::default()
            };
        }
        let refusal =
            (v.result == spf::SpfResult::Fail && self.spf == SpfPolicy::RejectFail).then(|| {
                let why = match v.detail.as_str() {
                    "" => format!("SPF fail: [{}] may not send mail from {domain}", req.ip),
                    exp => format!("SPF fail: {exp}"),
                };
                Reply::new(550, Enhanced(5, 7, 23), why)
            });
        Verdict {
            refusal,
            trace: spf::received_spf(&v, &q, identity),
            spf: result,
        }
    }

    fn client_verdict(&self, ip: IpAddr, dns: &dyn Resolver) -> Option<Reply> {
        if let Some(l) = dnsbl::check(&self.dnsbl, ip, dns) {
            let why = l.reason.map(|r| format!("; {r}")).unwrap_or_default();
            let text = format!(
                "Service unavailable; Client host [{ip}] blocked using {}{why}",
                l.zone
            );
            log::info!("dnsbl: [{ip}] listed in {}", l.zone);
            return Some(Reply::new(554, Enhanced(5, 7, 1), text));
        }
        if self.unknown_client && !forward_confirmed(ip, dns) {
            // As Postfix's unknown_client_reject_code: 450, since a
            // reverse zone that is broken today may be mended tomorrow.
            let text = format!("Client host rejected: cannot find your hostname, [{ip}]");
            return Some(Reply::new(450, Enhanced(4, 7, 25), text));
        }
        None
    }
}

/// Forward-confirmed reverse DNS: a PTR name of `ip` whose addresses
/// include `ip` (RFC 8601 §3 "iprev"). At most ten names are tried.
pub fn forward_confirmed(ip: IpAddr, dns: &dyn Resolver) -> bool {
    let Ok(names) = dns.ptr(ip) else {
        return false;
    };
    names
        .iter()
        .take(10)
        .any(|n| dns.ips(n, ip.is_ipv6()).is_ok_and(|a| a.contains(&ip)))
}

/// `reject_unknown_sender_domain`: a sender whose domain cannot receive
/// a bounce (no MX, A or AAAA record, or a null MX, RFC 7505 §4.2).
fn sender_domain(from: &str, domain: &str, dns: &dyn Resolver) -> Option<Reply> {
    let refuse = |code, e, why: &str| {
        Some(Reply::new(
            code,
            e,
            format!("<{from}>: Sender address rejected: {why}"),
        ))
    };
    let not_found = || refuse(550, Enhanced(5, 1, 8), "Domain not found");
    let failed = || {
        refuse(
            450,
            Enhanced(4, 1, 8),
            "Domain not found (DNS look-up failed)",
        )
    };
    match dns.mx(domain) {
        Err(DnsError::NxDomain) => not_found(),
        Err(DnsError::Temporary(_)) => failed(),
        Ok(mx) if mx.len() == 1 && mx[0].exchange.is_empty() => refuse(
            550,
            Enhanced(5, 7, 27),
            "Domain does not accept mail (null MX)",
        ),
        Ok(mx) if !mx.is_empty() => None,
        Ok(_) => match dns.addresses(domain) {
            Ok(a) if !a.is_empty() => None,
            Ok(_) | Err(DnsError::NxDomain) => not_found(),
            Err(DnsError::Temporary(_)) => failed(),
        },
    }
}
