//! The accept loop and the session pool. One listener thread per listen
//! address hands each connection over a `Handoff` queue to a bounded pool
//! of session threads (spawned on demand, at most `max_connections`, kept
//! for reuse). A connection beyond the limit, or beyond the per-client-IP
//! limit, hears `421` at once and is closed: the thread count never grows
//! without bound. SIGTERM/SIGINT stop the listeners, close idle sessions,
//! and wait (bounded) for transactions in DATA to finish.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::guard::anvil::Event as AnvilEvent;
use crate::handoff::Handoff;

use crate::receive::{self, Context};
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::session::Client;

/// Session threads need little stack: buffers live on the heap.
const SESSION_STACK: usize = 256 * 1024;

struct Job {
    stream: TcpStream,
    peer: SocketAddr,
    /// The kind of listener that accepted it.
    port: Port,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// SMTP (RFC 5321), STARTTLS when configured.
    Smtp,
    /// Submission (RFC 6409): AUTH before MAIL.
    Submission,
    /// Submission with TLS from the first byte (RFC 8314 §3.3).
    Smtps,
}

/// A bound listener.
pub struct Listener {
    pub socket: TcpListener,
    pub port: Port,
}

/// Book-keeping shared by listeners, workers and the signal thread.
struct Pool {
    active: AtomicUsize,
    spawned: Mutex<usize>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Open connections, so a stopping server can close the idle ones.
    open: Mutex<HashMap<u64, (TcpStream, Arc<AtomicBool>)>>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds every listen address. With the default settings a host without
/// IPv6 simply has no `[::1]` listener; a configured address that cannot
/// be bound is an error.
pub fn bind(ctx: &Context) -> Result<Vec<Listener>, String> {
    // Sockets systemd passed (socket activation) stand for the settings.
    let passed: Vec<Listener> = crate::os::listen_fds()
        .into_iter()
        .map(|(name, socket)| Listener {
            socket,
            port: match name.as_str() {
                "submission" => Port::Submission,
                "smtps" => Port::Smtps,
                _ => Port::Smtp,
            },
        })
        .collect();
    if !passed.is_empty() {
        log::info!(
            "{} socket(s) passed by systemd; listen settings not used",
            passed.len()
        );
        return Ok(passed);
    }
    let mut listeners = Vec::new();
    let cfg = &ctx.cfg;
    let all = cfg
        .listen
        .iter()
        .map(|a| (a, Port::Smtp))
        .chain(cfg.submission_listen.iter().map(|a| (a, Port::Submission)))
        .chain(cfg.smtps_listen.iter().map(|a| (a, Port::Smtps)));
    for (addr, port) in all {
        match TcpListener::bind(addr) {
            Ok(socket) => listeners.push(Listener { socket, port }),
            Err(e) if ctx.cfg.listen_is_default && addr.is_ipv6() => {
                log::info!("not listening on {addr}: {e}");
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
    if listeners.is_empty() {
        return Err("no address to listen on".into());
    }
    Ok(listeners)
}

/// The current session context; SIGHUP puts a new one in. Sessions keep
/// the one they started with, so a reload never disturbs them.
pub type ContextSlot = Arc<RwLock<Arc<Context>>>;

fn current(slot: &ContextSlot) -> Arc<Context> {
    slot.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Builds and installs new settings on SIGHUP; `Err` leaves the old ones.
pub type Reload = Box<dyn Fn() -> Result<(), String> + Send>;

/// Serves until SIGTERM or SIGINT; returns once sessions have finished or
/// `shutdown_timeout` has passed. SIGHUP calls `reload`.
pub fn serve(slot: ContextSlot, listeners: Vec<Listener>, reload: Reload) -> Result<(), String> {
    // Before anything says "listening": a signal from then on is handled,
    // never the default action (which would kill a daemon on SIGHUP).
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let ctx = current(&slot);
    let pool = Arc::new(Pool {
        active: AtomicUsize::new(0),
        spawned: Mutex::new(0),
        per_ip: Mutex::new(HashMap::new()),
        open: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(0),
    });
    let jobs = Handoff::<Job>::new();
    let mut local_addrs = Vec::new();
    let mut handles = Vec::new();
    for Listener { socket: l, port } in listeners {
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        log::info!(
            "listening on {addr}{}",
            match port {
                Port::Smtp => "",
                Port::Submission => " (submission: AUTH required)",
                Port::Smtps => " (submission over TLS from the first byte: AUTH required)",
            }
        );
        local_addrs.push(addr);
        let (slot, pool, jobs) = (slot.clone(), pool.clone(), jobs.clone());
        let h = thread::Builder::new()
            .name(format!("listen {addr}"))
            .spawn(move || accept_loop(l, port, slot, pool, jobs))
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }

    let stopper = {
        let (ctx, pool) = (ctx.clone(), pool.clone());
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || on_signals(signals, reload, &ctx, &pool, &local_addrs))
            .map_err(|e| e.to_string())?
    };
    // Listening, signals handled: ready (systemd's Type=notify).
    crate::notify::send("READY=1");
    for h in handles {
        let _ = h.join();
    }
    let _ = stopper.join();
    let deadline = Instant::now() + ctx.cfg.shutdown_timeout;
    while pool.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = pool.active.load(Ordering::SeqCst);
    if left > 0 {
        log::warn!(
            "stopped with {left} session(s) still open; unfinished messages were not acknowledged"
        );
    } else {
        log::info!("stopped");
    }
    Ok(())
}

/// SIGHUP reloads; SIGTERM or SIGINT stops (and ends this thread).
fn on_signals(
    mut signals: signal_hook::iterator::Signals,
    reload: Reload,
    ctx: &Context,
    pool: &Pool,
    local_addrs: &[SocketAddr],
) {
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            crate::notify::send("RELOADING=1");
            match reload() {
                Ok(()) => log::info!("reloaded the configuration and aliases"),
                Err(e) => log::error!("error: reload refused, keeping the old settings: {e}"),
            }
            crate::notify::send("READY=1");
            continue;
        }
        crate::notify::send("STOPPING=1");
        log::info!("signal {sig} received: stopping");
        stop(ctx, pool, local_addrs);
        return;
    }
}

/// Stops accepting, and closes the read side of every session that is not
/// in the middle of DATA: those see end-of-file, say 421 and end.
fn stop(ctx: &Context, pool: &Pool, addrs: &[SocketAddr]) {
    ctx.shutdown.store(true, Ordering::SeqCst);
    for a in addrs {
        // Wake the blocked accept() with a connection of our own.
        let mut wake = *a;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
    }
    for (stream, in_data) in lock(&pool.open).values() {
        if !in_data.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
}

fn refuse(mut stream: TcpStream, reply: Reply) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&reply.to_wire());
    let _ = stream.shutdown(Shutdown::Both);
}

fn accept_loop(l: TcpListener, port: Port, slot: ContextSlot, pool: Arc<Pool>, jobs: Handoff<Job>) {
    loop {
        let (stream, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                if current(&slot).shutdown.load(Ordering::SeqCst) {
                    return;
                }
                // EMFILE and friends: back off instead of spinning.
                log::warn!("warning: accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let ctx = current(&slot);
        if ctx.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let ip = peer.ip().to_canonical();
        if let Some(r) = over_limit(&ctx, &pool, ip) {
            refuse(stream, r);
            continue;
        }
        let active = pool.active.fetch_add(1, Ordering::SeqCst) + 1;
        {
            // Every active connection has a thread: spawn when there are fewer.
            let mut spawned = lock(&pool.spawned);
            if *spawned < active {
                let (slot, pool2, jobs) = (slot.clone(), pool.clone(), jobs.clone());
                match thread::Builder::new()
                    .name("smtpd".into())
                    .stack_size(SESSION_STACK)
                    .spawn(move || worker(jobs, slot, pool2))
                {
                    Ok(_) => *spawned += 1,
                    Err(e) => log::warn!("warning: cannot start a session thread: {e}"),
                }
            }
        }
        jobs.send(Job { stream, peer, port });
    }
}

/// The 421 for a connection over `max_connections`, or over
/// `max_connections_per_ip` from a client outside `relay_networks` (which
/// are exempt, like Postfix's smtpd_client_event_limit_exceptions);
/// otherwise the client's connection is counted.
fn over_limit(ctx: &Context, pool: &Pool, ip: IpAddr) -> Option<Reply> {
    let cfg = &ctx.cfg;
    if pool.active.load(Ordering::SeqCst) >= cfg.max_connections {
        log::warn!(
            "warning: connection limit {} reached: refusing [{ip}]",
            cfg.max_connections
        );
        let text = format!("{} Error: too many connections", cfg.hostname);
        return Some(Reply::new(421, Enhanced(4, 3, 2), text));
    }
    if cfg.may_relay(ip) {
        return None;
    }
    let (limit, unit) = (
        cfg.smtpd_client_connection_rate_limit,
        cfg.anvil_rate_time_unit,
    );
    if !ctx
        .anvil
        .allow(ip, AnvilEvent::Connection, limit, unit, Instant::now())
    {
        log::warn!(
            "warning: connection rate from [{ip}] over {limit} per {}s",
            unit.as_secs()
        );
        let text = format!("{} Error: too many connections from [{ip}]", cfg.hostname);
        return Some(Reply::new(421, Enhanced(4, 7, 0), text));
    }
    let mut per_ip = lock(&pool.per_ip);
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= cfg.max_connections_per_ip {
        drop(per_ip);
        log::warn!("warning: too many connections from [{ip}]");
        let text = format!(
            "{} Error: too many connections from your address",
            cfg.hostname
        );
        return Some(Reply::new(421, Enhanced(4, 7, 0), text));
    }
    *n += 1;
    None
}

fn worker(jobs: Handoff<Job>, slot: ContextSlot, pool: Arc<Pool>) {
    loop {
        let job = jobs.recv();
        let ctx = current(&slot);
        // An IPv4 client on a dual-stack socket: record it as IPv4.
        let ip = job.peer.ip().to_canonical();
        let id = pool.next_conn.fetch_add(1, Ordering::SeqCst);
        let in_data = Arc::new(AtomicBool::new(false));
        if let Ok(clone) = job.stream.try_clone() {
            lock(&pool.open).insert(id, (clone, in_data.clone()));
        }
        log::info!("connect from [{ip}]");
        let _ = job.stream.set_write_timeout(Some(ctx.cfg.command_timeout));
        let _ = job.stream.set_nodelay(true);
        let client = Client {
            ip: Some(ip),
            // On the submission ports only AUTH grants relaying.
            may_relay: job.port == Port::Smtp && ctx.cfg.may_relay(ip),
            auth_required: job.port != Port::Smtp,
        };
        let implicit_tls = job.port == Port::Smtps;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            receive::serve_tcp(&job.stream, client, &ctx, &in_data, implicit_tls);
        }));
        if result.is_err() {
            log::error!("error: session with [{ip}] panicked; connection closed");
        }
        let _ = job.stream.shutdown(Shutdown::Both);
        lock(&pool.open).remove(&id);
        if !ctx.cfg.may_relay(ip) {
            let mut per_ip = lock(&pool.per_ip);
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        pool.active.fetch_sub(1, Ordering::SeqCst);
    }
}
