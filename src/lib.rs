//! satchel: a small, dependable SMTP mail transfer agent (RFC 5321).
//!
//! Pure modules (no sockets, no files): `address`, `smtp`, `envelope`,
//! `time`, and the parsers of `config` and `aliases`. Edges: `spool`,
//! `receive`, `server`, `policy` (reads /etc/passwd and the aliases file).

// No unsafe code, except in `os` (privilege drop), which allows it explicitly.
#![deny(unsafe_code)]

pub mod address;
pub mod aliases;
pub mod bounce;
pub mod config;
#[cfg(feature = "tls")]
pub mod dane;
pub mod delivery;
#[cfg(feature = "tls")]
pub mod dkim;
pub mod dns;
pub mod dsn;
pub mod envelope;
pub mod guard;
pub mod handoff;
pub mod logging;
pub mod metrics;
pub mod mta_sts;
pub mod notify;
pub mod os;
pub mod policy;
pub mod preflight;
pub mod queue;
pub mod receive;
pub mod rewrite;
pub mod sendmail;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod status;
pub mod stdio;
pub mod storage;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
