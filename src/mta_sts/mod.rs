//! MTA-STS (RFC 8461) as a sender: which policy a destination domain has
//! now. A policy is looked for where the domain has an `_mta-sts` TXT
//! record, fetched over HTTPS (`fetch`), kept in the spool with its id and
//! the time it was fetched, and used until its `max_age` runs out:
//!
//! - a kept policy fetched within the last hour is used without asking DNS;
//! - else the TXT record is asked for: the same id renews the kept policy,
//!   a new id (or none kept) fetches it;
//! - a fetch that fails, or a TXT record that is gone or cannot be had,
//!   leaves the kept policy in force until it expires (§5.1);
//! - a domain without the TXT record is not asked again for an hour.
//!
//! Each outcome is logged on a line naming its TLS-RPT result type (RFC
//! 8460 §4.3), from which a report could be made.

#[cfg(feature = "tls")]
pub mod fetch;
pub mod policy;

use std::sync::Arc;

pub use policy::{Mode, Policy};

#[cfg(feature = "tls")]
pub use client::MtaSts;

/// Where delivery gets a domain's policy from.
pub trait Source: Send + Sync {
    /// The policy in force for `domain` (mode enforce or testing), if any.
    fn policy(&self, domain: &str) -> Option<Arc<Policy>>;
}

#[cfg(feature = "tls")]
mod client;
