//! The delivering half: a scheduler thread and a bounded pool of delivery
//! threads working from the spool.
//!
//! - `scheduler`: the due time of every queued message in memory (one scan
//!   at start, a rescan every `queue_run_interval` for what other processes
//!   queue), woken when a session queues a message, claiming due ones
//!   (`Spool::claim`) for the pool; `run_once` for `satchel queue run`.
//! - `attempt`: one message's attempt, as a short sequence of stages.
//! - `control`: the control socket (`queue flush`, `release`, `scan`).
//!
//! The one unavoidable duplicate: a remote server answers 250 to the final
//! dot and satchel crashes before the envelope update reaches the disk. On
//! restart the recipient is still pending and the message is sent again
//! (RFC 1047 describes the same window on the remote side). Every other
//! crash point loses nothing and repeats nothing that was recorded.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::address::ForwardPath;
use crate::config::transport::TlsLevel;
use crate::config::Config;
use crate::dns::Resolver;
use crate::envelope::{Envelope, RcptState};
use crate::handoff::Handoff;
use crate::policy::LocalPolicy;
use crate::spool::Spool;
use crate::transport::smtp::{RelayConfig, RelayCredentials};
use crate::transport::sts::StsConfig;

mod attempt;
mod control;
pub mod expand;
mod pipe_plan;
mod scheduler;
pub(crate) mod tls_level;

pub use attempt::{deliver_message, next_hop, relay_hosts, route_name, Hop};
pub use control::{control_path, control_socket, release, request_flush};
pub use scheduler::{kick_runner, run_once};

/// Stack for delivery threads (buffers are on the heap).
const DELIVERY_STACK: usize = 256 * 1024;

/// What the delivery threads share.
pub struct Deliverer {
    pub cfg: Config,
    pub spool: Spool,
    pub policy: Arc<LocalPolicy>,
    pub resolver: Arc<dyn Resolver>,
    /// The scheduler's inbox: newly queued messages (bounces too) wake it.
    pub wake: Handoff<Event>,
    /// Connections in progress per destination domain (kept across reloads).
    pub(super) domains: Arc<Mutex<HashMap<String, usize>>>,
    tls_client: crate::transport::smtp::ClientTls,
    /// STARTTLS towards MX hosts, per level (`tls_level`).
    mx_tls: Arc<tls_level::MxTls>,
    /// MTA-STS policies (`mta_sts = yes`, with TLS).
    mta_sts: Option<Arc<dyn crate::mta_sts::Source>>,
    pub(super) relay_auth: RelayCredentials,
}

/// `relayhost_auth_file`, read: `user:password` for the relayhost, or
/// `HOST user:password` lines per relay host. Warns when others may read it.
fn relay_auth(cfg: &Config) -> RelayCredentials {
    let Some(f) = cfg.relayhost_auth_file.as_ref() else {
        return RelayCredentials::default();
    };
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::metadata(f) {
        if m.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "warning: {} is readable by others: chmod 600 it",
                f.display()
            );
        }
    }
    match fs::read_to_string(f) {
        Ok(t) => RelayCredentials::parse(&t).unwrap_or_else(|line| {
            log::warn!(
                "warning: {}:{line}: expected 'user:password' or '[host]:port user:password'",
                f.display()
            );
            RelayCredentials::default()
        }),
        Err(e) => {
            log::warn!("warning: {}: {e}", f.display());
            RelayCredentials::default()
        }
    }
}

/// The current `Deliverer`; SIGHUP puts a new one in (new settings and
/// aliases), and each delivery takes the one current when it starts.
pub type Slot = Arc<std::sync::RwLock<Arc<Deliverer>>>;

pub fn current(slot: &Slot) -> Arc<Deliverer> {
    slot.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Requests to the scheduler from the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Retry everything now (`satchel queue flush`).
    Flush,
    /// Look for new messages now (queued by another process).
    Scan,
}

/// What the scheduler hears, in one inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message was queued (its ID): due now.
    Queued(String),
    /// A delivery thread is done with a message: its next attempt, or
    /// `None` when it left the queue.
    Done(String, Option<u64>),
    Control(Control),
}

impl Deliverer {
    pub fn new(
        cfg: Config,
        spool: Spool,
        policy: Arc<LocalPolicy>,
        resolver: Arc<dyn Resolver>,
        wake: Handoff<Event>,
    ) -> Deliverer {
        Deliverer {
            tls_client: client_tls(&cfg),
            mx_tls: Arc::new(tls_level::MxTls::new()),
            mta_sts: mta_sts(&cfg, &spool, &resolver),
            relay_auth: relay_auth(&cfg),
            cfg,
            spool,
            policy,
            resolver,
            wake,
            domains: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same spool, resolver and wake-up channel with new settings.
    /// (A reload also closes the relay hosts' circuit breakers.)
    pub fn reloaded(
        &self,
        cfg: Config,
        policy: Arc<LocalPolicy>,
        resolver: Arc<dyn Resolver>,
    ) -> Deliverer {
        crate::transport::breaker::reset();
        Deliverer {
            tls_client: client_tls(&cfg),
            mx_tls: Arc::new(tls_level::MxTls::new()),
            mta_sts: mta_sts(&cfg, &self.spool, &resolver),
            relay_auth: relay_auth(&cfg),
            cfg,
            spool: self.spool.clone(),
            policy,
            resolver,
            wake: self.wake.clone(),
            domains: self.domains.clone(),
        }
    }

    /// The relay configuration for a route to `domain`: towards its MX
    /// hosts (no `via` hosts) with that domain's TLS level.
    pub(super) fn relay_config_for(&self, domain: &str, mx: bool) -> RelayConfig {
        let mut c = self.relay_config();
        if mx {
            let level = tls_level::level(&self.cfg, &self.policy.tls_policy, domain);
            c.tls = self.mx_tls.client(level, &self.cfg);
            c.dane = tls_level::dane_of(level);
            // MTA-STS where the level leaves it room (may, dane).
            let room = matches!(level, TlsLevel::May | TlsLevel::Dane);
            c.sts = self
                .mta_sts
                .clone()
                .filter(|_| room)
                .map(|source| StsConfig {
                    source,
                    verify: self.mx_tls.clone(),
                    ca_file: self.cfg.tls_ca_file.clone(),
                });
        }
        c
    }

    pub(super) fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            hostname: self.cfg.hostname.clone(),
            port: self.cfg.relay_port,
            // The hosts of a route come with each delivery (`Smtp::via`).
            relayhost: None,
            connect_timeout: self.cfg.connect_timeout,
            bind: (self.cfg.smtp_bind_address, self.cfg.smtp_bind_address6),
            command_timeout: self.cfg.relay_timeout,
            tls: self.tls_client.clone(),
            dane: Default::default(),
            sts: None,
            relay_domains: self.cfg.relay_domains.clone(),
            auth: None,
        }
    }
}

/// MTA-STS for delivery when `mta_sts` is on (it needs HTTPS: the tls
/// feature).
#[cfg(feature = "tls")]
fn mta_sts(
    cfg: &Config,
    spool: &Spool,
    dns: &Arc<dyn Resolver>,
) -> Option<Arc<dyn crate::mta_sts::Source>> {
    cfg.mta_sts.then(|| {
        let m = crate::mta_sts::MtaSts::new(
            spool.clone(),
            dns.clone(),
            &cfg.tls_ca_file,
            cfg.mta_sts_port,
            cfg.connect_timeout,
        );
        Arc::new(m) as Arc<dyn crate::mta_sts::Source>
    })
}

#[cfg(not(feature = "tls"))]
fn mta_sts(
    _cfg: &Config,
    _spool: &Spool,
    _dns: &Arc<dyn Resolver>,
) -> Option<Arc<dyn crate::mta_sts::Source>> {
    None
}

/// STARTTLS as a client: opportunistic towards MX hosts (RFC 7435);
/// towards the relayhost as `relayhost_tls` says. Built once per settings.
#[cfg(feature = "tls")]
fn client_tls(cfg: &Config) -> crate::transport::smtp::ClientTls {
    use crate::config::RelayTls;
    let mode = if !cfg.relayhost.is_empty() {
        cfg.relayhost_tls
    } else {
        RelayTls::Opportunistic
    };
    let built = match mode {
        RelayTls::None => {
            return crate::transport::smtp::ClientTls::default();
        }
        RelayTls::Opportunistic | RelayTls::Required => crate::tls::client_opportunistic(),
        RelayTls::Verify => crate::tls::client_verifying(&cfg.tls_ca_file),
    };
    let required = matches!(mode, RelayTls::Required | RelayTls::Verify);
    let trust = match mode {
        RelayTls::Verify => crate::transport::smtp::Trust::Verified,
        _ => crate::transport::smtp::Trust::Untrusted,
    };
    let config = built
        .map_err(|e| log::warn!("warning: TLS client setup: {e}"))
        .ok();
    // Never fall back to less than was asked for: without a config,
    // `required` keeps the mail waiting.
    crate::transport::smtp::ClientTls {
        config,
        required,
        trust,
    }
}

#[cfg(not(feature = "tls"))]
fn client_tls(cfg: &Config) -> crate::transport::smtp::ClientTls {
    let required = !cfg.relayhost.is_empty()
        && matches!(
            cfg.relayhost_tls,
            crate::config::RelayTls::Required | crate::config::RelayTls::Verify
        );
    crate::transport::smtp::ClientTls {
        required,
        trust: Default::default(),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set when the daemon stops: delivery threads start no new message.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Messages being delivered right now.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Starts no more deliveries and waits until those under way are done and
/// recorded, or until `deadline`. Returns how many were still going: a
/// message cut off there is delivered again after the restart, so a
/// recipient that already had it may get it twice.
pub fn stop_and_wait(deadline: std::time::Instant) -> usize {
    STOPPING.store(true, Ordering::SeqCst);
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Starts the scheduler and the delivery pool; they run until the process ends.
pub fn start(slot: Slot) -> io::Result<()> {
    // Thread counts and the scan interval are fixed at start.
    let d = current(&slot);
    // At most `delivery_threads` messages are claimed at a time, so the
    // job queue never holds more.
    let jobs = Handoff::<String>::new();
    for n in 0..d.cfg.delivery_threads {
        let (slot, jobs, inbox) = (slot.clone(), jobs.clone(), d.wake.clone());
        thread::Builder::new().name(format!("delivery {n}")).stack_size(DELIVERY_STACK).spawn(move || {
            loop {
                let id = jobs.recv();
                IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
                if STOPPING.load(Ordering::SeqCst) {
                    // Claimed but not begun: start-up recovery requeues it.
                    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let d = current(&slot);
                let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver_message(&d, &id)))
                    .unwrap_or_else(|_| {
                        log::error!("error: {id}: delivery panicked; the message stays in active/ until restart");
                        None
                    });
                IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                inbox.send(Event::Done(id, next));
            }
        })?;
    }
    thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || scheduler::scheduler(&d, &jobs))?;
    Ok(())
}

/// `min_backoff * 2^(attempts-1)`, at most `max_backoff`.
pub fn backoff(cfg: &Config, attempts: u32) -> u64 {
    let min = cfg.min_backoff.as_secs().max(1);
    let max = cfg.max_backoff.as_secs().max(min);
    let shift = attempts.saturating_sub(1).min(32);
    min.saturating_mul(1u64 << shift).min(max)
}

pub(super) fn is_local(d: &Deliverer, addr: &ForwardPath) -> bool {
    match addr {
        ForwardPath::Postmaster => true,
        ForwardPath::Mailbox(m) => d.policy.is_local_domain(&m.domain),
    }
}

pub(super) fn log_outcome(
    env: &Envelope,
    addr: &ForwardPath,
    relay: &str,
    state: &RcptState,
    now: u64,
) {
    crate::metrics::outcome(state);
    let (status, text) = match state {
        RcptState::Sent(t) => ("sent", t),
        RcptState::Deferred(t) => ("deferred", t),
        RcptState::Failed(t) => ("bounced", t),
        RcptState::Pending => return,
    };
    log::info!(
        "{}: to={}, relay={relay}, delay={}, status={status} ({})",
        env.id,
        addr,
        now.saturating_sub(env.created),
        crate::envelope::escape(&text.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_to_max() {
        let cfg = Config::parse("min_backoff = 5m\nmax_backoff = 1h\n", "x").unwrap();
        let v: Vec<u64> = (1..=6).map(|a| backoff(&cfg, a)).collect();
        assert_eq!(v, vec![300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(backoff(&cfg, 1000), 3600);
    }
}
