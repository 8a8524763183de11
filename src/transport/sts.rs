//! MTA-STS (RFC 8461 §4, §5) when delivering to a domain's MX hosts: its
//! policy (from `crate::mta_sts`) narrows the hosts and asks for verified
//! TLS. In enforce mode only the MX hosts the policy lists are tried,
//! each over TLS whose certificate verifies for its name (tls_ca_file),
//! and a host that cannot give that is skipped: never plaintext, never an
//! unlisted host. In testing mode what enforce would refuse is logged and
//! the mail goes as without a policy. DANE, where a host has usable TLSA
//! records, comes first (§2).

use std::sync::Arc;

use super::smtp::{Hop, RelayConfig};
use crate::mta_sts::{Mode, Policy, Source};
use crate::smtp::reply::Enhanced;
use crate::status::Status;

/// MTA-STS for a delivery to MX hosts: where policies come from, and the
/// verifying TLS that enforce asks for (made at its first use).
#[derive(Clone)]
pub struct StsConfig {
    pub source: Arc<dyn Source>,
    pub verify: Arc<crate::delivery::tls_level::MxTls>,
    pub ca_file: std::path::PathBuf,
}

/// The policy of `domain` when its mail goes to its MX hosts.
pub fn policy_for(domain: &str, cfg: &RelayConfig) -> Option<Arc<Policy>> {
    match (&cfg.sts, &cfg.relayhost) {
        (Some(s), None) => s.source.policy(domain),
        _ => None,
    }
}

/// The hosts a policy lets the mail go to (all, but in enforce mode);
/// `Err` when enforce leaves none (RFC 8461 §5: the mail waits).
pub fn listed(domain: &str, hops: Vec<Hop>, policy: Option<&Policy>) -> Result<Vec<Hop>, Status> {
    let Some(p) = policy else {
        return Ok(hops);
    };
    let (ok, not): (Vec<Hop>, Vec<Hop>) = hops.into_iter().partition(|h| p.allows(&h.name));
    for h in &not {
        log::info!(
            "mta-sts: domain={domain} mx={} mode={:?} result=validation-failure: not listed in the policy{}",
            h.name,
            p.mode,
            if p.mode == Mode::Enforce { "; skipped" } else { "" }
        );
    }
    match p.mode {
        Mode::Enforce if ok.is_empty() => Err(Status::new(
            451,
            Enhanced(4, 7, 5),
            format!("no MX host of {domain} is listed in its MTA-STS policy"),
        )),
        Mode::Enforce => Ok(ok),
        _ => Ok(ok.into_iter().chain(not).collect()),
    }
}

/// In enforce mode, the configuration for a listed host: TLS required and
/// verified for its name.
pub fn verified(policy: Option<&Policy>, cfg: &RelayConfig) -> Option<RelayConfig> {
    let (Some(p), Some(s)) = (policy, &cfg.sts) else {
        return None;
    };
    (p.mode == Mode::Enforce).then(|| {
        let mut c = cfg.clone();
        c.tls = s.verify.verified(&s.ca_file);
        c.tls.required = true;
        c
    })
}
