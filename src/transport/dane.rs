//! DANE per MX host (RFC 7672 §2): what TLS a host gets when its
//! destination's level is `dane` or `dane-only`.
//!
//! | the DNS says | dane | dane-only |
//! |---|---|---|
//! | MX or address records not DNSSEC-validated | as `may` | the host is skipped (4.7.5) |
//! | TLSA look-up fails | the host is skipped (§2.2: it may have records) | same |
//! | no TLSA records (validated) | as `may` | skipped |
//! | TLSA records, none usable | TLS required, any certificate (§2.2) | same |
//! | usable TLSA records | TLS required, a certificate they match (`crate::dane`) | same |
//!
//! A host skipped is as a host that did not answer: the next MX is tried,
//! and the mail waits when none is left. Never plaintext where TLS was due.

use super::smtp::{Dane, Hop, RelayConfig};
use crate::dns::Resolver;
use crate::smtp::reply::Enhanced;
use crate::status::Status;

/// The configuration for `hop` when DANE changes it; `Err` skips the host.
pub fn for_hop(
    hop: &Hop,
    mx_secure: bool,
    cfg: &RelayConfig,
    dns: &dyn Resolver,
) -> Result<Option<RelayConfig>, Status> {
    if cfg.dane == Dane::Off || cfg.relayhost.is_some() {
        return Ok(None);
    }
    let insecure = |what: String| match cfg.dane {
        Dane::Only => Err(skip(format!("{what} (TLS policy dane-only)"))),
        _ => Ok(None),
    };
    if !mx_secure {
        return insecure("the MX records are not DNSSEC-validated".into());
    }
    if hop.name.parse::<std::net::IpAddr>().is_ok() {
        return insecure(format!("{} has no name for TLSA records", hop.name));
    }
    match dns.addresses_secured(&hop.name) {
        Ok(a) if a.secure => {}
        Ok(_) => {
            return insecure(format!(
                "the addresses of {} are not DNSSEC-validated",
                hop.name
            ))
        }
        // Not found: the address look-up that follows says why.
        Err(_) => return Ok(None),
    }
    let name = format!("_25._tcp.{}", hop.name);
    let found = dns
        .tlsa(&name)
        .map_err(|e| skip(format!("TLSA look-up of {name} failed: {e}")))?;
    if !found.secure {
        return insecure(format!(
            "the TLSA records of {name} are not DNSSEC-validated"
        ));
    }
    if found.value.is_empty() {
        return insecure(format!("{name} has no TLSA records"));
    }
    with_records(hop, found.value, cfg).map(Some)
}

/// 451 4.7.5 (RFC 7672 §8.2: a DANE failure is temporary).
fn skip(why: String) -> Status {
    Status::new(451, Enhanced(4, 7, 5), why)
}

/// TLS as the host's TLSA records say: made from the usable ones, or any
/// certificate when none is usable (TLS is still required, §2.2).
#[cfg(feature = "tls")]
fn with_records(
    hop: &Hop,
    records: Vec<crate::dns::Tlsa>,
    cfg: &RelayConfig,
) -> Result<RelayConfig, Status> {
    use super::smtp::Trust;
    let usable: Vec<_> = records.into_iter().filter(crate::dane::usable).collect();
    let mut c = cfg.clone();
    c.tls.required = true;
    if usable.is_empty() {
        log::info!(
            "{}: TLSA records, none usable: TLS without authentication",
            hop.name
        );
        c.tls.trust = Trust::Untrusted;
        return Ok(c);
    }
    let config = crate::dane::client_config(usable)
        .map_err(|e| skip(format!("{}: DANE TLS setup: {e}", hop.name)))?;
    c.tls.config = Some(config);
    c.tls.trust = Trust::Dane;
    Ok(c)
}

#[cfg(not(feature = "tls"))]
fn with_records(
    hop: &Hop,
    _records: Vec<crate::dns::Tlsa>,
    _cfg: &RelayConfig,
) -> Result<RelayConfig, Status> {
    Err(skip(format!(
        "{} has TLSA records and this satchel was built without TLS",
        hop.name
    )))
}
