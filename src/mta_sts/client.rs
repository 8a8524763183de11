//! The sender's side of MTA-STS: the policy cache and its refresh (see
//! the parent module's text).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{fetch, policy, Mode, Policy, Source};
use crate::dns::{DnsError, Resolver};
use crate::spool::Spool;

/// How long a kept policy is used without asking DNS for its id.
const RECHECK: u64 = 3600;
/// How long a domain without the TXT record is left alone.
const ABSENT: u64 = 3600;
/// Domains remembered without a policy, at most (then forgotten at once).
const MAX_ABSENT: usize = 10_000;

/// The MTA-STS of the delivering daemon: its spool, resolver and HTTPS
/// client.
pub struct MtaSts {
    pub spool: Spool,
    pub dns: Arc<dyn Resolver>,
    /// tls_ca_file, read at the first fetch.
    pub ca_file: std::path::PathBuf,
    pub port: u16,
    pub timeout: std::time::Duration,
    tls: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>>,
    absent: Mutex<HashMap<String, u64>>,
}

/// A kept policy: its id, when it was fetched, and the text.
struct Kept {
    id: String,
    fetched: u64,
    text: String,
    policy: Policy,
}

impl Kept {
    fn parse(record: &str) -> Option<Kept> {
        let (head, text) = record.split_once("\n\n")?;
        let mut lines = head.lines();
        let id = lines.next()?.strip_prefix("id ")?.to_string();
        let fetched = lines.next()?.strip_prefix("fetched ")?.parse().ok()?;
        let policy = policy::parse(text).ok()?;
        Some(Kept {
            id,
            fetched,
            text: text.to_string(),
            policy,
        })
    }

    fn record(&self) -> String {
        format!("id {}\nfetched {}\n\n{}", self.id, self.fetched, self.text)
    }

    fn valid(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }
}

impl MtaSts {
    pub fn new(
        spool: Spool,
        dns: Arc<dyn Resolver>,
        ca_file: &std::path::Path,
        port: u16,
        timeout: std::time::Duration,
    ) -> MtaSts {
        MtaSts {
            spool,
            dns,
            ca_file: ca_file.to_path_buf(),
            port,
            timeout,
            tls: std::sync::OnceLock::new(),
            absent: Mutex::new(HashMap::new()),
        }
    }

    /// The verifying HTTPS client, made once.
    fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        let made = self.tls.get_or_init(|| {
            crate::tls::client_verifying(&self.ca_file)
                .map_err(|e| log::warn!("warning: mta-sts: {e}"))
                .ok()
        });
        made.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.absent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy for `domain` at `now` (see the module's text).
    pub fn policy_at(&self, domain: &str, now: u64) -> Option<Policy> {
        let domain = domain.to_ascii_lowercase();
        let kept = self.spool.sts_policy(&domain).and_then(|r| Kept::parse(&r));
        let kept = kept.filter(|k| k.valid(now));
        if let Some(k) = kept.as_ref().filter(|k| now < k.fetched + RECHECK) {
            return Some(k.policy.clone());
        }
        if kept.is_none() && self.lock().get(&domain).is_some_and(|&until| now < until) {
            return None;
        }
        let id = match self.dns.txt(&format!("_mta-sts.{domain}")) {
            Ok(records) => policy::txt_of(&records),
            Err(DnsError::NxDomain) => None,
            Err(DnsError::Temporary(e)) => {
                log::info!(
                    "mta-sts: domain={domain} result=sts-policy-fetch-error: TXT look-up: {e}"
                );
                return kept.map(|k| k.policy);
            }
        };
        let Some(id) = id else {
            self.absent(&domain, now);
            return kept.map(|k| k.policy);
        };
        match kept {
            Some(k) if k.id == id => Some(self.keep(&domain, Kept { fetched: now, ..k })),
            kept => self.fetch(&domain, id, now).or(kept.map(|k| k.policy)),
        }
    }

    fn absent(&self, domain: &str, now: u64) {
        let mut a = self.lock();
        if a.len() >= MAX_ABSENT {
            a.clear();
        }
        a.insert(domain.to_string(), now + ABSENT);
    }

    fn keep(&self, domain: &str, k: Kept) -> Policy {
        if let Err(e) = self.spool.keep_sts_policy(domain, &k.record()) {
            log::warn!("warning: mta-sts: cannot keep the policy of {domain}: {e}");
        }
        k.policy
    }

    fn fetch(&self, domain: &str, id: String, now: u64) -> Option<Policy> {
        let f = fetch::Fetch {
            dns: self.dns.as_ref(),
            tls: self.tls()?,
            port: self.port,
            timeout: self.timeout,
        };
        let text = match fetch::fetch(domain, &f) {
            Ok(t) => t,
            Err(e) => {
                log::info!(
                    "mta-sts: domain={domain} policy_id={id} result=sts-policy-fetch-error: {e}"
                );
                return None;
            }
        };
        let policy = match policy::parse(&text) {
            Ok(p) => p,
            Err(e) => {
                log::info!(
                    "mta-sts: domain={domain} policy_id={id} result=sts-policy-invalid: {e}"
                );
                return None;
            }
        };
        log::info!(
            "mta-sts: domain={domain} policy_id={id} mode={:?} max_age={}: policy fetched",
            policy.mode,
            policy.max_age
        );
        Some(self.keep(
            domain,
            Kept {
                id,
                fetched: now,
                text,
                policy,
            },
        ))
    }
}

impl Source for MtaSts {
    fn policy(&self, domain: &str) -> Option<Arc<Policy>> {
        let p = self.policy_at(domain, crate::time::unix_now())?;
        (p.mode != Mode::None).then(|| Arc::new(p))
    }
}
