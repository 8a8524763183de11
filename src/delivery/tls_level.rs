//! STARTTLS towards MX hosts, per destination: `tls_policy_file`'s level
//! for the domain, else `smtp_tls_security_level` (Postfix's
//! smtp_tls_policy_maps and smtp_tls_security_level). The relayhost and
//! the transport table's hosts keep `relayhost_tls`.
//!
//! DANE is not done yet: `dane` is `may`, as Postfix treats it without a
//! validating resolver; `dane-only` keeps the mail waiting, never sends it
//! with less.

use std::sync::OnceLock;

use crate::config::transport::TlsLevel;
use crate::config::Config;
use crate::smtp::reply::Enhanced;
use crate::status::Status;
use crate::transport::smtp::ClientTls;

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

    /// The client TLS for `level` (dane-only is refused before: `refusal`).
    pub fn client(&self, level: TlsLevel, cfg: &Config) -> ClientTls {
        match level {
            TlsLevel::None => ClientTls::default(),
            TlsLevel::May | TlsLevel::Dane => self.may.clone(),
            TlsLevel::Encrypt | TlsLevel::DaneOnly => {
                let mut c = self.may.clone();
                c.required = true;
                c
            }
            TlsLevel::Verify => self.verify.get_or_init(|| verifying(cfg)).clone(),
        }
    }
}

#[cfg(feature = "tls")]
fn verifying(cfg: &Config) -> ClientTls {
    match crate::tls::client_verifying(&cfg.tls_ca_file) {
        Ok(c) => ClientTls {
            config: Some(c),
            required: true,
        },
        Err(e) => {
            // Never less than was asked for: without the CAs, nothing goes.
            log::warn!("warning: TLS verify level: {e}");
            ClientTls {
                config: None,
                required: true,
            }
        }
    }
}

#[cfg(not(feature = "tls"))]
fn verifying(_cfg: &Config) -> ClientTls {
    ClientTls { required: true }
}

/// The level for mail to `domain`'s MX hosts.
pub fn level(cfg: &Config, policy: &crate::config::transport::TlsPolicy, domain: &str) -> TlsLevel {
    policy.lookup(domain).unwrap_or(cfg.smtp_tls_security_level)
}

/// The deferral for a level satchel cannot meet yet (dane-only).
pub fn refusal(level: TlsLevel, domain: &str) -> Option<Status> {
    (level == TlsLevel::DaneOnly).then(|| {
        Status::new(
            451,
            Enhanced(4, 7, 5),
            format!("TLS policy dane-only for {domain}: satchel does not do DANE yet"),
        )
    })
}
