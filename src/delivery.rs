//! The delivering half: a scheduler thread and a bounded pool of delivery
//! threads working from the spool.
//!
//! The scheduler keeps the due time of every queued message in memory
//! (built by one scan at start), is woken over a channel when a session
//! queues a message (so the first attempt starts at once), rescans the
//! queue every `queue_run_interval` for messages queued by other processes,
//! and claims a due message by renaming `queue/<id>` to `active/<id>`
//! (atomic: one message, one thread). A delivery thread expands aliases,
//! delivers local recipients into mailboxes and remote ones through
//! `relay`, records every recipient's state in the envelope, bounces what
//! failed for good (RFC 3464, from `<>`), and then either removes the
//! message or returns it to `queue/` with the next attempt time
//! (exponential backoff from `min_backoff` to `max_backoff`; after
//! `max_queue_lifetime` the remaining recipients bounce, RFC 5321 §4.5.4.1).
//!
//! The one unavoidable duplicate: a remote server answers 250 to the final
//! dot and satchel crashes before the envelope update reaches the disk. On
//! restart the recipient is still pending and the message is sent again
//! (RFC 1047 describes the same window on the remote side). Every other
//! crash point loses nothing and repeats nothing that was recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::handoff::Handoff;

use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::aliases::Target;
use crate::bounce::{self, Action, Notice, Report};
use crate::config::Config;
use crate::dns::Resolver;
use crate::envelope::{Envelope, RcptState, Recipient};
use crate::local;
use crate::policy::LocalPolicy;
use crate::relay::{self, Outcome, RelayConfig};
use crate::spool::{is_queue_id, Content, ReadError, Spool};
use crate::time::unix_now;

/// Stack for delivery threads (buffers are on the heap).
const DELIVERY_STACK: usize = 256 * 1024;

/// What the delivery threads share.
pub struct Deliverer {
    pub cfg: Config,
    pub spool: Spool,
    pub policy: LocalPolicy,
    pub resolver: Arc<dyn Resolver>,
    /// The scheduler's inbox: newly queued messages (bounces too) wake it.
    pub wake: Handoff<Event>,
    /// Connections in progress per destination domain (kept across reloads).
    domains: Arc<Mutex<HashMap<String, usize>>>,
    tls_client: crate::relay::ClientTls,
    relay_auth: Option<(String, String)>,
}

/// `relayhost_auth_file`: one `user:password` line. Warns when others
/// may read it.
fn relay_auth(cfg: &Config) -> Option<(String, String)> {
    let f = cfg.relayhost_auth_file.as_ref()?;
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
        Ok(t) => match t
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split_once(':'))
        {
            Some((u, p)) => Some((u.trim().to_string(), p.trim_end().to_string())),
            None => {
                log::warn!("warning: {}: expected 'user:password'", f.display());
                None
            }
        },
        Err(e) => {
            log::warn!("warning: {}: {e}", f.display());
            None
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
        policy: LocalPolicy,
        resolver: Arc<dyn Resolver>,
        wake: Handoff<Event>,
    ) -> Deliverer {
        Deliverer {
            tls_client: client_tls(&cfg),
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
    pub fn reloaded(
        &self,
        cfg: Config,
        policy: LocalPolicy,
        resolver: Arc<dyn Resolver>,
    ) -> Deliverer {
        Deliverer {
            tls_client: client_tls(&cfg),
            relay_auth: relay_auth(&cfg),
            cfg,
            spool: self.spool.clone(),
            policy,
            resolver,
            wake: self.wake.clone(),
            domains: self.domains.clone(),
        }
    }

    fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            hostname: self.cfg.hostname.clone(),
            port: self.cfg.relay_port,
            relayhost: self.cfg.relayhost.clone(),
            connect_timeout: self.cfg.connect_timeout,
            command_timeout: self.cfg.relay_timeout,
            tls: self.tls_client.clone(),
            auth: if self.cfg.relayhost.is_some() {
                self.relay_auth.clone()
            } else {
                None
            },
        }
    }
}

/// STARTTLS as a client: opportunistic towards MX hosts (RFC 7435);
/// towards the relayhost as `relayhost_tls` says. Built once per settings.
#[cfg(feature = "tls")]
fn client_tls(cfg: &Config) -> crate::relay::ClientTls {
    use crate::config::RelayTls;
    let mode = if cfg.relayhost.is_some() {
        cfg.relayhost_tls
    } else {
        RelayTls::Opportunistic
    };
    let built = match mode {
        RelayTls::None => {
            return crate::relay::ClientTls {
                config: None,
                required: false,
            }
        }
        RelayTls::Opportunistic | RelayTls::Required => crate::tls::client_opportunistic(),
        RelayTls::Verify => crate::tls::client_verifying(&cfg.tls_ca_file),
    };
    let required = matches!(mode, RelayTls::Required | RelayTls::Verify);
    match built {
        Ok(c) => crate::relay::ClientTls {
            config: Some(c),
            required,
        },
        Err(e) => {
            log::warn!("warning: TLS client setup: {e}");
            // Never fall back to less than was asked for.
            crate::relay::ClientTls {
                config: None,
                required,
            }
        }
    }
}

#[cfg(not(feature = "tls"))]
fn client_tls(cfg: &Config) -> crate::relay::ClientTls {
    let required = cfg.relayhost.is_some()
        && matches!(
            cfg.relayhost_tls,
            crate::config::RelayTls::Required | crate::config::RelayTls::Verify
        );
    crate::relay::ClientTls { required }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        .spawn(move || scheduler(&d, &jobs))?;
    Ok(())
}

/// Due times of queued messages, in memory. Queue IDs are kept as the
/// 64-bit numbers they spell (16 hex digits), not as strings: a queue of
/// 100,000 deferred messages costs a few megabytes.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(u64, u64)>,
    at: HashMap<u64, u64>,
}

fn id_number(id: &str) -> Option<u64> {
    is_queue_id(id)
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

fn id_string(n: u64) -> String {
    format!("{n:016X}")
}

impl Schedule {
    /// Schedules `id` at `t`; strings that are not queue IDs are ignored.
    fn set(&mut self, id: String, t: u64) {
        let Some(n) = id_number(&id) else { return };
        if let Some(old) = self.at.insert(n, t) {
            self.due.remove(&(old, n));
        }
        self.due.insert((t, n));
    }

    fn pop_due(&mut self, now: u64) -> Option<String> {
        let &(t, n) = self.due.first()?;
        if t > now {
            return None;
        }
        self.due.remove(&(t, n));
        self.at.remove(&n);
        Some(id_string(n))
    }

    fn contains(&self, id: &str) -> bool {
        id_number(id).is_some_and(|n| self.at.contains_key(&n))
    }

    fn len(&self) -> usize {
        self.at.len()
    }

    fn ids(&self) -> Vec<String> {
        self.at.keys().map(|&n| id_string(n)).collect()
    }
}

/// Adds the messages in `queue/` that the schedule does not know yet.
fn scan(d: &Deliverer, s: &mut Schedule, in_flight: &HashSet<String>) {
    // Local submissions of unprivileged users first (see `maildrop`).
    for id in crate::spool::maildrop::pickup(&d.spool, &d.cfg.hostname, d.cfg.message_size_limit) {
        s.set(id, 0);
    }
    let Ok(waiting) = d.spool.waiting() else {
        return;
    };
    for (id, due) in waiting {
        // Queued by another process, perhaps: new IDs stay above it.
        crate::spool::note_id(&id);
        if s.contains(&id) || in_flight.contains(&id) {
            continue;
        }
        // The envelope's mtime is its next attempt (see `Spool::requeue`),
        // so a large queue is scheduled from one stat per message; a
        // damaged envelope is found when it is delivered. Never later than
        // one maximal backoff.
        if let Some(t) = due {
            s.set(id, t.min(unix_now() + d.cfg.max_backoff.as_secs()));
            continue;
        }
        match d.spool.read_envelope(&id, crate::spool::QueueState::Queued) {
            Some(Ok((_, env))) => s.set(id, env.next_attempt),
            // Due now: delivery reads it again, and moves a damaged file
            // to corrupt/ (an I/O error is retried later instead).
            Some(Err(err)) => {
                log::warn!("warning: {err}");
                s.set(id, 0);
            }
            None => {}
        }
    }
}

fn scheduler(d: &Deliverer, jobs: &Handoff<String>) {
    let mut s = Schedule::default();
    let mut in_flight = HashSet::new();
    scan(d, &mut s, &in_flight);
    log::info!("queue scan: {} message(s) waiting", s.len());
    let interval = d.cfg.queue_run_interval;
    let mut next_scan = std::time::Instant::now() + interval;
    loop {
        let now = unix_now();
        while in_flight.len() < d.cfg.delivery_threads {
            let Some(id) = s.pop_due(now) else { break };
            match d.spool.claim(&id) {
                Ok(true) => {
                    in_flight.insert(id.clone());
                    jobs.send(id);
                }
                Ok(false) => {} // deleted, held, or taken by another runner
                Err(e) => log::warn!("warning: {id}: cannot claim: {e}"),
            }
        }
        let until_due = s
            .due
            .first()
            .map(|(t, _)| Duration::from_secs(t.saturating_sub(now)));
        let until_scan = next_scan.saturating_duration_since(std::time::Instant::now());
        let mut wait = until_scan;
        // Idle cached SMTP sessions are closed after a few seconds; the
        // wake-up only happens while there are some.
        crate::relay::expire_cached();
        if crate::relay::cached_sessions() > 0 {
            wait = wait.min(Duration::from_secs(3));
        }
        if in_flight.len() < d.cfg.delivery_threads {
            if let Some(u) = until_due {
                wait = wait.min(u);
            }
        }
        match d.wake.recv_timeout(wait) {
            Some(Event::Queued(id)) if !in_flight.contains(&id) => s.set(id, 0),
            Some(Event::Queued(_)) => {}
            Some(Event::Done(id, next)) => {
                in_flight.remove(&id);
                if let Some(t) = next {
                    s.set(id, t);
                }
            }
            Some(Event::Control(Control::Flush)) => {
                scan(d, &mut s, &in_flight);
                // Only what waits in queue/: a message held since it was
                // scheduled is not tried, nor counted.
                let ids: Vec<String> = s
                    .ids()
                    .into_iter()
                    .filter(|id| d.spool.is_waiting(id))
                    .collect();
                log::info!("flush: {} queued message(s) due now", ids.len());
                for id in ids {
                    s.set(id, 0);
                }
            }
            Some(Event::Control(Control::Scan)) => scan(d, &mut s, &in_flight),
            None => {}
        }
        if std::time::Instant::now() >= next_scan {
            scan(d, &mut s, &in_flight);
            next_scan = std::time::Instant::now() + interval;
        }
    }
}

/// Delivers everything that is due once, then returns (`satchel queue run`,
/// and the detached runs that inetd-mode sessions start). Bounces created
/// on the way are delivered in the same run. Returns how many messages
/// were worked on. The caller holds the runner lock.
pub fn run_once(d: &Arc<Deliverer>, all: bool) -> usize {
    let mut s = Schedule::default();
    scan(d, &mut s, &HashSet::new());
    let now = unix_now();
    let mut batch: Vec<String> = Vec::new();
    while let Some(id) = s.pop_due(if all { u64::MAX } else { now }) {
        batch.push(id);
    }
    batch.reverse(); // workers pop from the end: oldest first
    let mut done = 0;
    let mut rounds = 0;
    while !batch.is_empty() {
        let work = Arc::new(Mutex::new(std::mem::take(&mut batch)));
        let handles: Vec<_> = (0..d.cfg.delivery_threads)
            .map(|_| {
                let (d, work) = (d.clone(), work.clone());
                thread::spawn(move || {
                    let mut n = 0;
                    loop {
                        let Some(id) = lock(&work).pop() else {
                            return n;
                        };
                        if d.spool.claim(&id).unwrap_or(false) {
                            deliver_message(&d, &id);
                            n += 1;
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            done += h.join().unwrap_or(0);
        }
        while let Some(ev) = d.wake.try_recv() {
            if let Event::Queued(id) = ev {
                batch.push(id);
            }
        }
        if batch.is_empty() && rounds < 3 {
            // Mail queued while we worked (a session that saw us running
            // did not start another runner): pick it up before leaving.
            rounds += 1;
            scan(d, &mut s, &HashSet::new());
            while let Some(id) = s.pop_due(unix_now()) {
                batch.push(id);
            }
        }
    }
    done
}

/// Starts a detached `satchel queue run` for this configuration unless a
/// queue runner (the daemon or another run) holds the runner lock: so mail
/// leaves even on a host that runs satchel only from inetd (as dma does).
pub fn kick_runner(spool: &Spool, config: Option<&Path>) {
    match spool.try_runner_lock() {
        Ok(Some(_probe)) => {} // nobody delivers: start a run (the probe lock ends here)
        // The daemon (or an unprivileged user who cannot even tell): ask the
        // daemon to look now rather than at its next scan.
        Ok(None) | Err(_) => {
            let _ = control_request(spool.root(), "scan");
            return;
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("satchel"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["queue", "run"]);
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    match cmd.spawn() {
        Ok(child) => log::info!("started queue runner pid {}", child.id()),
        Err(e) => log::warn!("warning: cannot start a queue runner: {e}"),
    }
}

/// The path of the control socket in the spool.
pub fn control_path(spool: &Path) -> PathBuf {
    crate::spool::control_path(spool)
}

/// Listens on `spool/control` for `flush` requests. Refuses to start when
/// another live server already answers there.
pub fn control_socket(spool: &Path, inbox: Handoff<Event>) -> Result<(), String> {
    let path = control_path(spool);
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "another satchel already serves the spool {} ({} answers)",
            spool.display(),
            path.display()
        ));
    }
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Any local user may ask for a scan (after a maildrop submission) or a
    // flush, as with Postfix's public pickup and qmgr FIFOs.
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let mut r = BufReader::new(&stream).take(256);
                let answer = match r.read_line(&mut line) {
                    Ok(_) if line.trim() == "flush" => {
                        inbox.send(Event::Control(Control::Flush));
                        "ok\n"
                    }
                    Ok(_) if line.trim() == "scan" => {
                        inbox.send(Event::Control(Control::Scan));
                        "ok\n"
                    }
                    // Released from hold: due now, whatever was planned.
                    Ok(_)
                        if line
                            .trim()
                            .strip_prefix("release ")
                            .is_some_and(is_queue_id) =>
                    {
                        let id = line.trim()["release ".len()..].to_string();
                        inbox.send(Event::Queued(id));
                        "ok\n"
                    }
                    _ => "error: unknown request\n",
                };
                let _ = (&stream).write_all(answer.as_bytes());
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// After `queue release`: the running server schedules the message now;
/// without one, a queue run is started as after a submission.
pub fn release(spool: &Spool, id: &str, config: Option<&Path>) {
    if control_request(spool.root(), &format!("release {id}")).is_err() {
        kick_runner(spool, config);
    }
}

/// Asks a running server to flush its queue. `Err` when none answers.
pub fn request_flush(spool: &Path) -> io::Result<String> {
    control_request(spool, "flush")
}

fn control_request(spool: &Path, what: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(control_path(spool))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{what}\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.trim().to_string())
}

/// A recipient's address without brackets, for logs, DSNs and relay.
fn bare(addr: &ForwardPath) -> String {
    match addr {
        ForwardPath::Postmaster => "postmaster".to_string(),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}

fn is_local(d: &Deliverer, addr: &ForwardPath) -> bool {
    match addr {
        ForwardPath::Postmaster => true,
        ForwardPath::Mailbox(m) => d.policy.is_local_domain(&m.domain),
    }
}

fn local_part(addr: &ForwardPath) -> String {
    match addr {
        ForwardPath::Postmaster => "postmaster".into(),
        ForwardPath::Mailbox(m) => m.local_unquoted().to_ascii_lowercase(),
    }
}

/// Replaces every open local recipient that is an alias by its expansion
/// (marked `expanded`, so it is never expanded again). True if changed.
fn expand_aliases(d: &Deliverer, env: &mut Envelope) -> bool {
    let mut changed = false;
    let mut out: Vec<Recipient> = Vec::with_capacity(env.rcpts.len());
    let fallback_domain = d
        .cfg
        .local_domains
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    for r in std::mem::take(&mut env.rcpts) {
        let name = local_part(&r.addr);
        if r.expanded
            || !r.state.is_open()
            || !is_local(d, &r.addr)
            || !d.policy.aliases.contains(&name)
        {
            out.push(r);
            continue;
        }
        changed = true;
        match d.policy.aliases.expand(&name) {
            Ok(targets) => {
                let domain = match &r.addr {
                    ForwardPath::Mailbox(m) => m.domain.clone(),
                    ForwardPath::Postmaster => Domain::Name(fallback_domain.clone()),
                };
                for t in targets {
                    let addr = match t {
                        Target::Local(user) => ForwardPath::Mailbox(Mailbox {
                            local: user,
                            domain: domain.clone(),
                        }),
                        Target::Remote(m) => ForwardPath::Mailbox(m),
                    };
                    if !out.iter().any(|o| o.addr == addr && o.expanded) {
                        out.push(Recipient {
                            addr,
                            state: RcptState::Pending,
                            expanded: true,
                        });
                    }
                }
                log::info!("{}: alias {} expanded", env.id, bare(&r.addr));
            }
            Err(why) => {
                out.push(Recipient {
                    state: RcptState::Failed(format!("554 5.4.6 {why}")),
                    ..r
                });
            }
        }
    }
    env.rcpts = out;
    changed
}

/// Works one claimed message (its envelope is in `active/`). Returns the
/// next attempt time, or `None` when the message is gone from the queue.
pub fn deliver_message(d: &Deliverer, id: &str) -> Option<u64> {
    let (mut env, mut msg) = match d.spool.read_claimed(id) {
        // A file under another message's name (a recycled file a crash
        // left behind) is damaged, not that message.
        Ok(q) if q.env.id != id => {
            log::warn!(
                "warning: {id}: the queue file holds message {}; moved to corrupt/",
                q.env.id
            );
            let _ = d.spool.quarantine(id);
            return None;
        }
        Ok(q) => (q.env, q.content),
        Err(ReadError::Damaged(e)) => {
            log::warn!("warning: {id}: damaged queue file ({e}); moved to corrupt/");
            let _ = d.spool.quarantine(id);
            return None;
        }
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            log::warn!("warning: {id}: queue file gone: {e}");
            return None;
        }
        Err(ReadError::Io(e)) => {
            // Out of file descriptors, an I/O error: back to the queue for
            // a later attempt, not left in active/ until a restart.
            log::warn!("warning: {id}: cannot read queue file: {e}; tried again later");
            return requeue(d, id, unix_now() + d.cfg.min_backoff.as_secs());
        }
    };
    let now = unix_now();
    // Failures already reported by an earlier attempt.
    let failed_before: Vec<ForwardPath> = env
        .rcpts
        .iter()
        .filter(|r| matches!(r.state, RcptState::Failed(_)))
        .map(|r| r.addr.clone())
        .collect();
    // The recipients' states as the queue file has them.
    let mut recorded: Vec<RcptState> = env.rcpts.iter().map(|r| r.state.clone()).collect();
    if expand_aliases(d, &mut env) {
        // An alias that failed (a loop) is written as still to do: it is
        // written as failed with its bounce, at the end of the attempt, so a
        // crash before that expands it, fails it and reports it again.
        let mut snap = env.clone();
        for r in snap.rcpts.iter_mut() {
            if matches!(r.state, RcptState::Failed(_)) && !failed_before.contains(&r.addr) {
                r.state = RcptState::Pending;
            }
        }
        match d.spool.record(id, &snap, &msg) {
            Ok(c) => msg = c,
            Err(e) => {
                log::warn!("warning: {id}: cannot record alias expansion: {e}");
                return requeue(d, id, now + d.cfg.min_backoff.as_secs());
            }
        }
        recorded = snap.rcpts.into_iter().map(|r| r.state).collect();
    }
    let mut remote_mta: HashMap<usize, String> = HashMap::new();
    let mut postponed = false;

    // Local recipients first: no network, quick. A mailbox gets one copy
    // however many recipients lead to it (an alias and its member, two
    // spellings, two local domains), as with Postfix's duplicate filter.
    let mut delivered: HashSet<String> = env
        .rcpts
        .iter()
        .filter(|r| matches!(r.state, RcptState::Sent(_)) && is_local(d, &r.addr))
        .map(|r| local_part(&r.addr))
        .collect();
    // The message's own Delivered-To: fields, read when first needed.
    let mut delivered_to: Option<Vec<String>> = None;
    for i in 0..env.rcpts.len() {
        let r = &env.rcpts[i];
        if !r.state.is_open() || !is_local(d, &r.addr) {
            continue;
        }
        let user = local_part(&r.addr);
        if delivered.contains(&user) {
            let state = RcptState::Sent(
                "250 2.0.0 delivered to mailbox (once for all its recipients)".into(),
            );
            log_outcome(&env, &r.addr, "local", &state, now);
            env.rcpts[i].state = state;
            continue;
        }
        let known = user == "postmaster" || d.policy.is_known_local(&user);
        let addr = bare(&r.addr);
        let state = if !known || !crate::config::valid_user_name(&user) {
            RcptState::Failed(format!("550 5.1.1 <{addr}>: user unknown"))
        } else if delivered_to
            .get_or_insert_with(|| delivered_to_of(&msg))
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&addr))
        {
            // It was delivered here before and came back (Postfix's local
            // delivery test): a loop through some forwarder.
            RcptState::Failed(format!("554 5.4.6 <{addr}>: mail forwarding loop"))
        } else {
            match local::deliver(
                &d.cfg.mail_dir,
                d.cfg.mailbox_format,
                &d.cfg.hostname,
                &user,
                &env.from.to_string(),
                &addr,
                &msg,
            ) {
                Ok(_) => {
                    delivered.insert(user.clone());
                    RcptState::Sent("250 2.0.0 delivered to mailbox".into())
                }
                Err(e) => RcptState::Deferred(format!(
                    "451 4.3.0 cannot deliver to mailbox of {user}: {e}"
                )),
            }
        };
        log_outcome(&env, &r.addr, "local", &state, now);
        env.rcpts[i].state = state;
    }

    // Remote recipients, one transaction per domain.
    let mut by_domain: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, r) in env.rcpts.iter().enumerate() {
        if !r.state.is_open() || is_local(d, &r.addr) {
            continue;
        }
        let ForwardPath::Mailbox(m) = &r.addr else {
            continue;
        };
        let domain = m.domain.to_lowercase();
        match by_domain.iter_mut().find(|(dn, _)| *dn == domain) {
            Some((_, v)) if v.len() < 100 => v.push(i),
            _ => by_domain.push((domain, vec![i])),
        }
    }
    let rcfg = d.relay_config();
    for (domain, idx) in by_domain {
        // Before the network, and between domains: what was delivered so
        // far is written down, so that a crash or a stop does not deliver
        // it again.
        checkpoint(d, &env, &mut msg, &failed_before, &mut recorded);
        {
            let mut load = lock(&d.domains);
            let n = load.entry(domain.clone()).or_insert(0);
            if *n >= d.cfg.destination_concurrency_limit {
                postponed = true;
                continue;
            }
            *n += 1;
        }
        let rcpts: Vec<String> = idx.iter().map(|&i| bare(&env.rcpts[i].addr)).collect();
        let m = relay::Message {
            from: &env.from.to_string(),
            content: &msg,
            size: env.size,
            eight_bit: env.body == "8BITMIME",
            smtputf8: env.smtputf8,
        };
        // For domain literals the "domain" is the address itself.
        let target = domain
            .trim_start_matches("[ipv6:")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let result = relay::deliver(&target, &rcpts, &m, &rcfg, d.resolver.as_ref());
        {
            let mut load = lock(&d.domains);
            if let Some(n) = load.get_mut(&domain) {
                *n -= 1;
            }
        }
        let relay_name = result.relay.clone().unwrap_or_else(|| "none".into());
        for (k, &i) in idx.iter().enumerate() {
            let state = match result
                .outcomes
                .get(k)
                .cloned()
                .unwrap_or_else(|| Outcome::Deferred("no result".into()))
            {
                Outcome::Sent(t) => RcptState::Sent(t),
                Outcome::Deferred(t) => RcptState::Deferred(t),
                Outcome::Failed(t) => RcptState::Failed(t),
            };
            if let Some(mta) = &result.remote_mta {
                remote_mta.insert(i, mta.clone());
            }
            log_outcome(&env, &env.rcpts[i].addr, &relay_name, &state, now);
            env.rcpts[i].state = state;
        }
    }

    // RFC 5321 §4.5.4.1: give up on what is still deferred after the lifetime.
    let expired = now.saturating_sub(env.created) >= d.cfg.max_queue_lifetime.as_secs();
    if expired {
        for r in env.rcpts.iter_mut() {
            if let RcptState::Deferred(why) = &r.state {
                r.state =
                    RcptState::Failed(format!("4.4.7 delivery time expired; last error: {why}"));
            }
        }
    }

    // Bounce what failed in this attempt.
    let newly_failed: Vec<usize> = (0..env.rcpts.len())
        .filter(|&i| {
            matches!(env.rcpts[i].state, RcptState::Failed(_))
                && !failed_before.contains(&env.rcpts[i].addr)
        })
        .collect();
    if !newly_failed.is_empty() {
        if let Err(e) = notify(d, &env, &newly_failed, &remote_mta, Action::Failed, &msg) {
            // Keep them open: they are tried (and bounced) again later.
            log::warn!("warning: {id}: cannot queue the bounce: {e}; will retry");
            for &i in &newly_failed {
                if let RcptState::Failed(t) = &env.rcpts[i].state {
                    env.rcpts[i].state = RcptState::Deferred(t.clone());
                }
            }
        }
    }
    // Optional delay warning (Postfix's delay_warning_time).
    let dwt = d.cfg.delay_warning_time.as_secs();
    if dwt > 0 && !env.warned && now.saturating_sub(env.created) >= dwt {
        let delayed: Vec<usize> = (0..env.rcpts.len())
            .filter(|&i| matches!(env.rcpts[i].state, RcptState::Deferred(_)))
            .collect();
        if !delayed.is_empty()
            && notify(d, &env, &delayed, &remote_mta, Action::Delayed, &msg).is_ok()
        {
            env.warned = true;
        }
    }

    if env.is_done() {
        if let Err(e) = d.spool.finish(id, &msg) {
            log::warn!("warning: {id}: cannot remove queue file: {e}");
        }
        log::info!("{id}: removed");
        return None;
    }
    let next = if postponed
        && env
            .rcpts
            .iter()
            .all(|r| !matches!(r.state, RcptState::Deferred(_)))
    {
        now + 1 // only waiting for a concurrency slot: not an attempt
    } else {
        env.attempts += 1;
        now + backoff(&d.cfg, env.attempts)
    };
    env.next_attempt = next;
    if let Err(e) = d.spool.record(id, &env, &msg) {
        log::warn!("warning: {id}: cannot update queue file: {e}");
    }
    requeue(d, id, next)
}

/// The addresses in the `Delivered-To:` fields of the message's header
/// (RFC 9228); none if it cannot be read (delivery reports that itself).
fn delivered_to_of(msg: &Content) -> Vec<String> {
    let mut head = Vec::new();
    if msg
        .open()
        .and_then(|f| {
            f.take(bounce::MAX_RETURNED_HEADERS as u64)
                .read_to_end(&mut head)
        })
        .is_err()
    {
        return Vec::new();
    }
    // Only a real header section (one that ends in an empty line), with
    // folded fields unfolded (RFC 5322 §2.2.3).
    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
        return Vec::new();
    }
    let section = bounce::header_section(&head);
    let text = String::from_utf8_lossy(section)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("Delivered-To").then(|| {
                value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
        .collect()
}

/// Writes down the recipients delivered since `recorded` (the states in
/// the queue file), when there are any. Only deliveries: a failure is
/// written with its bounce at the end of the attempt, so one that a crash
/// cuts off is tried, and reported, again.
fn checkpoint(
    d: &Deliverer,
    env: &Envelope,
    msg: &mut Content,
    failed_before: &[ForwardPath],
    recorded: &mut Vec<RcptState>,
) {
    let sent = |s: &RcptState| matches!(s, RcptState::Sent(_));
    if !env
        .rcpts
        .iter()
        .zip(recorded.iter())
        .any(|(r, old)| sent(&r.state) && !sent(old))
    {
        return;
    }
    let mut snap = env.clone();
    for (r, old) in snap.rcpts.iter_mut().zip(recorded.iter()) {
        if matches!(r.state, RcptState::Failed(_)) && !failed_before.contains(&r.addr) {
            r.state = old.clone();
        }
    }
    match d.spool.record(&env.id, &snap, msg) {
        Ok(c) => {
            *msg = c;
            *recorded = snap.rcpts.into_iter().map(|r| r.state).collect();
        }
        Err(e) => log::warn!(
            "warning: {}: cannot record the deliveries so far: {e}",
            env.id
        ),
    }
}

fn requeue(d: &Deliverer, id: &str, next: u64) -> Option<u64> {
    match d.spool.requeue(id, next) {
        Ok(()) => Some(next),
        Err(e) => {
            log::warn!(
                "warning: {id}: cannot return to queue/: {e}; it is retried after a restart"
            );
            None
        }
    }
}

/// `min_backoff * 2^(attempts-1)`, at most `max_backoff`.
pub fn backoff(cfg: &Config, attempts: u32) -> u64 {
    let min = cfg.min_backoff.as_secs().max(1);
    let max = cfg.max_backoff.as_secs().max(min);
    let shift = attempts.saturating_sub(1).min(32);
    min.saturating_mul(1u64 << shift).min(max)
}

fn log_outcome(env: &Envelope, addr: &ForwardPath, relay: &str, state: &RcptState, now: u64) {
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
        crate::envelope::escape(text)
    );
}

/// Queues a bounce or delay warning to the reverse-path. A message from
/// `<>` gets none (RFC 5321 §4.5.5: a bounce is never bounced); like
/// Postfix's default, such double bounces are logged and dropped.
fn notify(
    d: &Deliverer,
    env: &Envelope,
    idx: &[usize],
    mta: &HashMap<usize, String>,
    action: Action,
    msg: &Content,
) -> io::Result<()> {
    let ReversePath::Mailbox(sender) = &env.from else {
        log::info!("{}: undeliverable mail from <> (a bounce): not returned; discarded as Postfix does with double bounces", env.id);
        return Ok(());
    };
    let mut original = Vec::new();
    msg.open()?.take(64 * 1024).read_to_end(&mut original)?;
    let reports: Vec<Report> = idx
        .iter()
        .map(|&i| {
            let r = &env.rcpts[i];
            let text = match &r.state {
                RcptState::Failed(t) | RcptState::Deferred(t) | RcptState::Sent(t) => t.clone(),
                RcptState::Pending => String::new(),
            };
            Report {
                recipient: bare(&r.addr),
                status: bounce::status_of(
                    &text,
                    action == Action::Failed && !text.starts_with('4'),
                ),
                diagnostic: text,
                remote_mta: mta.get(&i).cloned(),
            }
        })
        .collect();
    let now = unix_now();
    let to = sender.to_string();
    let bytes = bounce::build(&Notice {
        action,
        hostname: &d.cfg.hostname,
        queue_id: &env.id,
        to: &to,
        arrival: env.created,
        now,
        reports: &reports,
        original: &original,
    });
    let mut benv = Envelope::local(
        ReversePath::Null,
        vec![ForwardPath::Mailbox(sender.clone())],
        &d.cfg.hostname,
        now,
        &bytes,
    );
    benv.smtputf8 |= env.smtputf8;
    let bid = d.spool.queue_bytes(&bytes, &mut benv)?;
    log::info!(
        "{}: sender {} notification: {bid}",
        env.id,
        if action == Action::Failed {
            "non-delivery"
        } else {
            "delay"
        }
    );
    d.wake.send(Event::Queued(bid));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_to_fields_are_read_unfolded_and_only_from_a_header_section() {
        let read = |bytes: &[u8]| {
            let p = std::env::temp_dir().join(format!("satchel-dt-{}", std::process::id()));
            fs::write(&p, bytes).unwrap();
            let c = Content {
                path: p.clone(),
                offset: 0,
                len: bytes.len() as u64,
            };
            let v = delivered_to_of(&c);
            fs::remove_file(&p).unwrap();
            v
        };
        assert_eq!(
            read(b"Delivered-To:\r\n bob@h.test\r\ndelivered-to: <Carol@h.test>\r\n\r\nDelivered-To: body@h.test\r\n"),
            vec!["bob@h.test".to_string(), "Carol@h.test".to_string()]
        );
        // No empty line: no header section to speak of.
        assert!(read(b"Delivered-To: bob@h.test\r\nno end of headers").is_empty());
    }

    #[test]
    fn backoff_doubles_from_min_to_max() {
        let cfg = Config::parse("min_backoff = 5m\nmax_backoff = 1h\n", "x").unwrap();
        let v: Vec<u64> = (1..=6).map(|a| backoff(&cfg, a)).collect();
        assert_eq!(v, vec![300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(backoff(&cfg, 1000), 3600);
    }

    #[test]
    fn schedule_hands_out_due_messages_in_time_order() {
        let mut s = Schedule::default();
        let (a, b, c) = ("000000000000000A", "00066162D8212D7A", "FFFFFFFFFFFFFFFF");
        s.set(b.into(), 20);
        s.set(a.into(), 10);
        s.set(c.into(), 5);
        s.set(c.into(), 30); // rescheduled
        s.set("not-an-id".into(), 0); // ignored
        assert!(s.contains(b) && !s.contains("not-an-id"));
        assert_eq!(s.len(), 3);
        assert_eq!(s.pop_due(15), Some(a.into()));
        assert_eq!(s.pop_due(15), None);
        assert_eq!(s.pop_due(100), Some(b.into()));
        assert_eq!(s.pop_due(100), Some(c.into()));
        assert_eq!(s.len(), 0);
    }
}
