//! Transports: how a message reaches the recipients a route gives them.
//! Each takes one batch (a message and some of its recipients, all bound
//! for the same next hop) and returns one state per recipient, in order:
//! `local` writes Maildir/mbox mailboxes here, `smtp` speaks SMTP to the
//! next hop (the domain's MX hosts or a relayhost), `lmtp` hands local
//! recipients to a delivery agent (Dovecot), `pipe` runs a command. A transport never
//! touches the spool: the delivery pipeline records what it returns.

use crate::envelope::{Envelope, RcptState};
use crate::spool::Content;

pub mod breaker;
pub mod dane;
pub mod lmtp;
pub mod local;
pub mod pipe;
pub mod smtp;
pub mod sts;

/// A message and the recipients of it that one transport is to deliver.
pub struct Batch<'a> {
    pub env: &'a Envelope,
    pub content: &'a Content,
    /// Indexes into `env.rcpts`, all open, all for `next_hop`.
    pub rcpts: &'a [usize],
    /// What the route named: a domain for `smtp`, empty for `local`.
    pub next_hop: &'a str,
}

/// What a transport did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// One state per recipient of the batch, in its order (never `Pending`).
    pub states: Vec<RcptState>,
    /// The host that answered, for logs (`mx.example[192.0.2.1]:25`,
    /// `local`, `none`).
    pub relay: String,
    /// The remote host's name for a DSN's Remote-MTA field, if one answered.
    pub remote_mta: Option<String>,
    /// What a recipient that asked for success notices (RFC 3461
    /// NOTIFY=SUCCESS) is told once sent: `delivered` here, `relayed` to a
    /// hop that does not speak DSN, nothing when the hop took the request.
    pub success_notice: Option<crate::bounce::Action>,
}

pub trait Transport {
    fn deliver(&self, batch: &Batch) -> Delivery;
}
