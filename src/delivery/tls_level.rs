//! STARTTLS towards MX hosts, per destination: `tls_policy_file`'s level
//! for the domain, else `smtp_tls_security_level` (Postfix's
//! smtp_tls_policy_maps and smtp_tls_security_level). The relayhost and
//! the transport table's hosts keep `relayhost_tls`.
//!
//! `dane` and `dane-only` start from `may`; each MX host's TLSA records
//! then decide (`transport::dane`). With `smtp_dns_support_level =
//! dnssec`, `may` is `dane` (opportunistic DANE, as Postfix's).

use std::sync::OnceLock;

use crate::config::transport::TlsLevel;
use crate::config::Config;
use crate::transport::smtp::{ClientTls, Dane, Trust};

/// The client configurations of the levels, built once per settings (the
/// verifying one on first use: it reads tls_ca_file).
#[derive(Default)]
pub struct MxTls {
    may: ClientTls,
    verify: OnceLock<ClientTls>,
}

impl MxTls {
    #[cfg(feature = "tls")]
    pub fn new() -> MxTls {
        let may = match crate::tls::client_opportunistic() {
            Ok(c) => ClientTls {
                config: Some(c),
                required: false,
                trust: Trust::Untrusted,
            },
            Err(e) => {
                log::warn!("warning: TLS client setup: {e}");
                ClientTls::default()
            }
        };
        MxTls {
            may,
            verify: OnceLock::new(),
        }
    }

    #[cfg(not(feature = "tls"))]
    pub fn new() -> MxTls {
        MxTls::default()
    }

    /// The client TLS for `level` (for the DANE levels, where a host has
    /// no TLSA records; `dane_of` says which).
    pub fn client(&self, level: TlsLevel, cfg: &Config) -> ClientTls {
        match level {
            TlsLevel::None => ClientTls::default(),
            TlsLevel::May | TlsLevel::Dane | TlsLevel::DaneOnly => self.may.clone(),
            TlsLevel::Encrypt => {
                let mut c = self.may.clone();
                c.required = true;
                c
            }
            TlsLevel::Verify => self.verified(&cfg.tls_ca_file),
        }
    }
}

impl MxTls {
    /// TLS verified against `ca_file` (read at the first use).
    pub fn verified(&self, ca_file: &std::path::Path) -> ClientTls {
        self.verify.get_or_init(|| verifying(ca_file)).clone()
    }
}

#[cfg(feature = "tls")]
fn verifying(ca_file: &std::path::Path) -> ClientTls {
    match crate::tls::client_verifying(ca_file) {
        Ok(c) => ClientTls {
            config: Some(c),
            required: true,
            trust: Trust::Verified,
        },
        Err(e) => {
            // Never less than was asked for: without the CAs, nothing goes.
            log::warn!("warning: TLS verify level: {e}");
            ClientTls {
                config: None,
                required: true,
                trust: Trust::Verified,
            }
        }
    }
}

#[cfg(not(feature = "tls"))]
fn verifying(_ca_file: &std::path::Path) -> ClientTls {
    ClientTls {
        required: true,
        trust: Trust::Verified,
    }
}

/// The level for mail to `domain`'s MX hosts.
pub fn level(cfg: &Config, policy: &crate::config::transport::TlsPolicy, domain: &str) -> TlsLevel {
    let level = policy.lookup(domain).unwrap_or(cfg.smtp_tls_security_level);
    let dnssec = cfg.smtp_dns_support_level == crate::config::transport::DnsSupport::Dnssec;
    match level {
        TlsLevel::May if dnssec => TlsLevel::Dane,
        other => other,
    }
}

/// DANE at `level`.
pub fn dane_of(level: TlsLevel) -> Dane {
    match level {
        TlsLevel::Dane => Dane::May,
        TlsLevel::DaneOnly => Dane::Only,
        _ => Dane::Off,
    }
}
