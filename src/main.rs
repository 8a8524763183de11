//! The `satchel` command: argument parsing and wiring only.
//!
//! ```text
//! satchel serve [-c FILE] [-p PIDFILE]   the daemon, in the foreground
//! satchel inetd [-c FILE]                 one SMTP session on stdin/stdout
//! satchel check-config [-c FILE]          validate and print the effective settings
//! satchel queue run [-c FILE]             deliver what is due once, then exit (cron)
//! satchel queue list [--json] [-c FILE]   mailq-style listing of the spool
//! satchel queue flush [-c FILE]           ask the running server to retry everything now
//! satchel queue show|hold|release ID      inspect, hold back, let go
//! satchel queue delete ID|ALL             remove
//! satchel sendmail [options] [rcpt...]    the sendmail command (also via a `sendmail`,
//!                                         `mailq` or `newaliases` symlink)
//! ```

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use satchel::config::Config;
use satchel::conn::Context;
use satchel::delivery::{self, Deliverer};
use satchel::dns::{DnsResolver, Resolver};
use satchel::handoff::Handoff;
use satchel::policy::LocalPolicy;
use satchel::sendmail::{self, Mode};
use satchel::spool::Spool;
use satchel::{queue, server, time};

/// Exit status for a bad configuration or bad usage.
const EXIT_CONFIG: u8 = 2;

const USAGE: &str = "usage: satchel COMMAND [-c FILE]
  serve [-p PIDFILE]          the daemon, in the foreground
  inetd                       one SMTP session on stdin/stdout (inetd, xinetd, systemd)
  check-config                check the configuration and print the settings in force
  queue list [--json]         list the queue (as mailq)
  queue run                   deliver what is due once, then exit (cron)
  queue flush                 ask the running server to try everything now
  queue show|hold|release ID  show a message, keep it back, let it go
  queue delete ID|ALL         remove a message, or every message not being delivered
  install-links DIR           make DIR/sendmail, DIR/mailq and DIR/newaliases
  sendmail [options] [rcpt]   the sendmail command (satchel sendmail --help)
  --version, --help
Also runs as sendmail, mailq and newaliases when called by those names
(see install-links). -c FILE, else $SATCHEL_CONFIG, else /etc/satchel/satchel.conf.";

/// The commands of the usage, for "did you mean".
const COMMANDS: [&str; 6] = [
    "serve",
    "inetd",
    "check-config",
    "queue",
    "install-links",
    "sendmail",
];

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match name.as_str() {
        "sendmail" => return sendmail(&args, None),
        "mailq" => return sendmail(&args, Some(Mode::ListQueue)),
        "newaliases" => return sendmail(&args, Some(Mode::CheckAliases)),
        _ => {}
    }
    if args.first().map(String::as_str) == Some("sendmail") {
        args.remove(0);
        return sendmail(&args, None);
    }
    let mut opts = getopts::Options::new();
    opts.optopt("c", "config", "configuration file", "FILE");
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    opts.optflag("", "json", "queue list: one JSON object per message");
    opts.optopt(
        "p",
        "pidfile",
        "serve: write the process ID to FILE",
        "FILE",
    );
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("satchel: {e}\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if m.opt_present("h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if m.opt_present("V") {
        println!("{}", version());
        return ExitCode::SUCCESS;
    }
    let words: Vec<&str> = m.free.iter().map(String::as_str).collect();
    let cfg = match Config::locate(m.opt_str("c").as_deref()) {
        Ok(c) => c,
        // Under inetd, stdout and stderr are the client's socket: it gets a
        // 421, and the reason goes to syslog, never to the peer.
        Err(e) if words == ["inetd"] => {
            init_logging_to(&Config::default(), LogTo::Syslog);
            log::error!("fatal: {e}");
            println!("421 4.3.0 Service temporarily unavailable\r");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match words.as_slice() {
        ["serve"] => serve(cfg, m.opt_str("p")),
        ["inetd"] => inetd(cfg, false),
        ["queue", "run"] => queue_run(cfg),
        ["check-config"] => check_config(&cfg),
        ["install-links", dir] => install_links(dir),
        ["queue", "list"] | ["queue"] => queue_list(&cfg, m.opt_present("json")),
        ["queue", "flush"] => queue_flush(&cfg),
        ["queue", verb @ ("show" | "delete" | "hold" | "release"), id] => {
            queue_tool(&cfg, verb, id)
        }
        _ => {
            eprintln!("satchel: {}\n{USAGE}", unknown_command(&words));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `satchel 0.1.0 (tls)`.
fn version() -> String {
    let tls = if cfg!(feature = "tls") {
        "tls"
    } else {
        "no tls"
    };
    format!("satchel {} ({tls})", env!("CARGO_PKG_VERSION"))
}

/// What is wrong with a command line that matched no command.
fn unknown_command(words: &[&str]) -> String {
    match words {
        [] => "no command given".into(),
        [w, ..] if !COMMANDS.contains(w) => {
            let hint = satchel::config::did_you_mean(w, COMMANDS.iter().copied());
            format!("unknown command '{w}'{hint}")
        }
        _ => format!("'{}' is not a complete command", words.join(" ")),
    }
}

/// Where log lines go: stderr, or syslog when stderr may be the client's
/// socket (inetd and systemd `Accept=yes` hand the socket to fd 2 too).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogTo {
    Stderr,
    Syslog,
}

/// Sends each log line as one datagram to `syslog_socket` (RFC 3164 form,
/// facility mail, severity info: `<22>`).
struct Syslog {
    sock: Option<std::os::unix::net::UnixDatagram>,
    line: Vec<u8>,
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(i) = self.line.iter().position(|&b| b == b'\n') {
            let rest = self.line.split_off(i + 1);
            let mut msg = format!("<22>satchel[{}]: ", std::process::id()).into_bytes();
            msg.extend_from_slice(&self.line[..i]);
            if let Some(s) = &self.sock {
                let _ = s.send(&msg);
            }
            self.line = rest;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging(cfg: &Config) {
    init_logging_to(cfg, LogTo::Stderr);
}

fn init_logging_to(cfg: &Config, to: LogTo) {
    let mut b = env_logger::Builder::new();
    b.filter_level(cfg.log_level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if to == LogTo::Syslog {
        let sock = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(&cfg.syslog_socket).map(|_| s))
            .ok();
        b.format(|buf, record| writeln!(buf, "{}", record.args()));
        b.target(env_logger::Target::Pipe(Box::new(Syslog {
            sock,
            line: Vec::new(),
        })));
    } else {
        b.format(|buf, record| {
            writeln!(
                buf,
                "{} satchel[{}]: {}",
                time::iso8601(time::unix_now()),
                std::process::id(),
                record.args()
            )
        });
        b.target(env_logger::Target::Stderr);
    }
    let _ = b.try_init();
}

fn serve(cfg: Config, pidfile: Option<String>) -> ExitCode {
    init_logging(&cfg);
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Everything it would die on later, before it creates anything.
    let problems = satchel::preflight::check(&cfg);
    for p in &problems {
        log::error!("fatal: {p}");
    }
    if !problems.is_empty() {
        return ExitCode::from(EXIT_CONFIG);
    }
    let spool = match Spool::open(&cfg.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            let why = satchel::preflight::explain(&e, "spool_dir", &cfg.spool_dir);
            log::error!("fatal: {why}");
            return ExitCode::FAILURE;
        }
    };
    // The daemon lives long: it keeps delivered messages' files for reuse.
    spool.enable_recycling();
    if let Err(e) = satchel::maildrop::prepare(spool.root()) {
        log::warn!(
            "warning: spool {}: cannot prepare maildrop/: {e}",
            cfg.spool_dir.display()
        );
    }
    // Before recovery: a second server on the same spool must not touch it.
    let inbox = Handoff::<delivery::Event>::new();
    if let Err(e) = delivery::control_socket(&cfg.spool_dir, inbox.clone()) {
        log::error!("fatal: {e}");
        return ExitCode::FAILURE;
    }
    // The daemon is the queue runner for its whole life.
    let _runner = match runner_lock(&spool) {
        Ok(l) => l,
        Err(c) => return c,
    };
    match spool.recover() {
        Ok(r) => log::info!(
            "spool {}: {} queued, {} requeued from active, {} temporary and {} orphaned files removed",
            cfg.spool_dir.display(),
            r.queued,
            r.requeued,
            r.tmp_removed,
            r.orphans_removed
        ),
        Err(e) => {
            log::error!("fatal: spool {}: recovery failed: {e}", cfg.spool_dir.display());
            return ExitCode::FAILURE;
        }
    }
    let resolver = match resolver(&cfg) {
        Ok(r) => r,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ctx = match with_tls(Context::new(cfg.clone(), policy.clone(), spool.clone())) {
        Ok(c) => c,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    ctx.on_queued = Some({
        let inbox = inbox.clone();
        Arc::new(move |id| inbox.send(delivery::Event::Queued(id)))
    });
    if let Err(e) = check_root_ports(&cfg) {
        log::error!("fatal: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let listeners = match server::bind(&ctx) {
        Ok(l) => l,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            log::error!("fatal: pid file {p}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = become_service_user(&cfg, true) {
        log::error!("fatal: {e}");
        return ExitCode::FAILURE;
    }
    let delivery_slot: delivery::Slot = Arc::new(RwLock::new(Arc::new(Deliverer::new(
        cfg.clone(),
        spool,
        policy,
        Arc::from(resolver),
        inbox,
    ))));
    if cfg.defer_delivery {
        log::info!("defer_delivery = yes: mail is queued, not delivered");
    } else if let Err(e) = delivery::start(delivery_slot.clone()) {
        log::error!("fatal: cannot start delivery: {e}");
        return ExitCode::FAILURE;
    }
    let ctx_slot: server::ContextSlot = Arc::new(RwLock::new(Arc::new(ctx)));
    let (delivering, shutdown_timeout) = (!cfg.defer_delivery, cfg.shutdown_timeout);
    let reload = reloader(cfg, ctx_slot.clone(), delivery_slot);
    let result = server::serve(ctx_slot, listeners, reload);
    if delivering {
        // Deliveries under way finish and are written down, so a restart
        // does not send them again (bounded like the sessions' wait).
        let left = delivery::stop_and_wait(std::time::Instant::now() + shutdown_timeout);
        if left > 0 {
            log::warn!(
                "stopped with {left} delivery(ies) under way; they are tried again after a restart"
            );
        }
    }
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP: read the configuration and aliases again; install them only
/// if both are valid. Listeners, the spool and thread counts need a restart.
fn reloader(
    start: Config,
    ctx_slot: server::ContextSlot,
    delivery_slot: delivery::Slot,
) -> server::Reload {
    Box::new(move || {
        let path = start.source.as_ref().map(|p| p.display().to_string());
        let cfg = Config::locate(path.as_deref()).map_err(|e| e.to_string())?;
        let policy = LocalPolicy::load(&cfg)?;
        // dns_servers, dns_timeout and /etc/resolv.conf, read again.
        let dns: Arc<dyn satchel::dns::Resolver> = Arc::from(resolver(&cfg)?);
        for name in Config::needs_restart(&start, &cfg) {
            log::warn!("warning: {name} changed: it takes effect at the next restart");
        }
        let old = ctx_slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut ctx = with_tls(Context::new(cfg.clone(), policy.clone(), old.spool.clone()))?;
        ctx.on_queued = old.on_queued.clone();
        ctx.shutdown = old.shutdown.clone();
        *ctx_slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ctx);
        let d = delivery::current(&delivery_slot).reloaded(cfg, policy, dns);
        *delivery_slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
        Ok(())
    })
}

/// Reads the message: up to end of input, or (without `-i`) up to a line
/// holding a single dot, so an interactive writer can end with ".".
fn read_message(ignore_dots: bool) -> std::io::Result<Vec<u8>> {
    use std::io::BufRead;
    let mut input = std::io::stdin().lock();
    let mut all = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(all);
        }
        if !ignore_dots && (line == b".\n" || line == b".\r\n") {
            return Ok(all);
        }
        all.extend_from_slice(&line);
    }
}

/// `sendmail`, `mailq`, `newaliases`, and `satchel sendmail`.
fn sendmail(args: &[String], forced: Option<Mode>) -> ExitCode {
    let mut o = match sendmail::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(sendmail::EX_USAGE);
        }
    };
    if let Some(m) = forced {
        o.mode = m;
    }
    match o.mode {
        Mode::Help => {
            println!("{}", sendmail::USAGE);
            return ExitCode::SUCCESS;
        }
        Mode::Version => {
            println!("{}", version());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let cfg = match Config::locate(o.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(sendmail::EX_CONFIG);
        }
    };
    for w in &o.warnings {
        eprintln!("sendmail: warning: {w}");
    }
    match o.mode {
        Mode::Smtp => return inetd(cfg, true),
        Mode::ListQueue => return queue_list(&cfg, false),
        // A running daemon delivers: ask it, as `queue flush` does.
        Mode::RunQueue
            if delivery::request_flush(&cfg.spool_dir).is_ok_and(|a| a.starts_with("ok")) =>
        {
            return ExitCode::SUCCESS
        }
        Mode::RunQueue => return queue_run(cfg),
        Mode::CheckAliases => {
            return match satchel::aliases::Aliases::load(&cfg.aliases_file) {
                Ok(a) => {
                    println!("{}: {} aliases", cfg.aliases_file.display(), a.map.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("newaliases: {e}");
                    ExitCode::from(sendmail::EX_DATAERR)
                }
            }
        }
        Mode::Deliver | Mode::Help | Mode::Version => {}
    }
    init_logging_to(
        &cfg,
        if o.verbose {
            LogTo::Stderr
        } else {
            LogTo::Syslog
        },
    );
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(sendmail::EX_CONFIG);
        }
    };
    // Root (cron, say) queues as the service user, so that the daemon owns
    // what it has to rewrite and link; the Received: line still names root.
    let invoker = sendmail::submit::invoking_user();
    if let Err(e) = become_service_user(&cfg, false) {
        eprintln!("sendmail: {e}");
        return ExitCode::from(sendmail::EX_TEMPFAIL);
    }
    let spool = match Spool::open(&cfg.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sendmail: spool {}: {e}", cfg.spool_dir.display());
            return ExitCode::from(sendmail::EX_TEMPFAIL);
        }
    };
    let input = match read_message(o.ignore_dots) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("sendmail: reading the message: {e}");
            return ExitCode::from(sendmail::EX_TEMPFAIL);
        }
    };
    match sendmail::submit::run(&cfg, &policy, &spool, &o, &input, invoker) {
        Ok((id, unknown)) => {
            if o.verbose {
                eprintln!("sendmail: queued as {id}");
            }
            if !cfg.defer_delivery {
                delivery::kick_runner(&spool, cfg.source.as_deref());
            }
            if unknown.is_empty() {
                ExitCode::SUCCESS
            } else {
                // Sent to the others; sendmail's word for the rest.
                eprintln!("sendmail: {}", unknown.join("; "));
                ExitCode::from(sendmail::EX_NOUSER)
            }
        }
        Err((code, msg)) => {
            eprintln!("sendmail: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Started as root: refuse privileged ports without `user` (binding them
/// is the only reason to start as root). Call before binding.
fn check_root_ports(cfg: &Config) -> Result<(), String> {
    if satchel::os::euid() == 0 && cfg.user.is_none() {
        if let Some(a) = cfg.listen.iter().find(|a| a.port() < 1024) {
            return Err(format!(
                "refusing to listen on {a} as root without a user to become: set `user = satchel` (an unprivileged account) in {}",
                cfg.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the configuration".into())
            ));
        }
        log::warn!("warning: running as root; set `user` in the configuration to drop privileges");
    }
    Ok(())
}

/// Started as root with `user` set: hands the spool and mail directories
/// over (`thorough`: the whole tree, as the daemon does at start; else only
/// when their tops are not the service user's yet, so a per-session
/// process does not walk a large queue) and becomes that user for good.
fn become_service_user(cfg: &Config, thorough: bool) -> Result<(), String> {
    let Some(user) = cfg.user.as_deref() else {
        return Ok(());
    };
    if satchel::os::euid() != 0 {
        return Ok(()); // already unprivileged: nothing to drop
    }
    let (uid, primary) = satchel::os::lookup_user(user)
        .ok_or_else(|| format!("user '{user}' not found in /etc/passwd"))?;
    let gid = match cfg.group.as_deref() {
        Some(g) => satchel::os::lookup_group(g)
            .ok_or_else(|| format!("group '{g}' not found in /etc/group"))?,
        None => primary,
    };
    std::fs::create_dir_all(&cfg.mail_dir)
        .map_err(|e| format!("{}: {e}", cfg.mail_dir.display()))?;
    for top in [&cfg.spool_dir, &cfg.mail_dir] {
        use std::os::unix::fs::MetadataExt;
        let handed_over = std::fs::metadata(top).is_ok_and(|m| m.uid() == uid);
        if thorough || !handed_over {
            chown_tree(top, uid, gid, 3).map_err(|e| format!("chown {}: {e}", top.display()))?;
        }
    }
    satchel::os::drop_privileges(uid, gid).map_err(|e| format!("cannot become {user}: {e}"))?;
    log::info!("running as {user} (uid {uid}, gid {gid})");
    Ok(())
}

/// chown of a directory and what it holds, `depth` levels down.
/// Gives the service user what root made in the spool and mail
/// directories (a first start, a root `queue run`): only entries root
/// owns, never through a symbolic link (lchown; directories opened with
/// O_NOFOLLOW and walked through their open descriptor, so swapping one
/// for a link while the walk runs leads nowhere), and never in `maildrop/`,
/// whose files belong to the users who submitted them (and whose owner
/// pickup reports). Anything owned by someone else stays theirs.
fn chown_tree(p: &std::path::Path, uid: u32, gid: u32, depth: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let meta = std::fs::symlink_metadata(p)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.uid() == 0 {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    }
    if depth == 0 || !meta.is_dir() || p.file_name() == Some(std::ffi::OsStr::new("maildrop")) {
        return Ok(());
    }
    let dir = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(p)
    {
        Ok(d) => d,
        // Swapped for a link or for something else since the look above.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let pinned = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    // Without /proc, the path itself (the parents are the service user's
    // own or root's, so only a compromised service account could race it).
    let base = if pinned.is_dir() {
        pinned
    } else {
        p.to_path_buf()
    };
    for e in std::fs::read_dir(&base)? {
        chown_tree(&base.join(e?.file_name()), uid, gid, depth - 1)?;
    }
    Ok(())
}

/// `install-links DIR`: the sendmail, mailq and newaliases symbolic links
/// that local programs expect, pointing at this binary.
fn install_links(dir: &str) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("satchel: cannot find my own path: {e}");
            return ExitCode::FAILURE;
        }
    };
    for name in ["sendmail", "mailq", "newaliases"] {
        let link = std::path::Path::new(dir).join(name);
        if link.symlink_metadata().is_ok() {
            if let Err(e) = std::fs::remove_file(&link) {
                eprintln!("satchel: {}: {e}", link.display());
                return ExitCode::FAILURE;
            }
        }
        if let Err(e) = std::os::unix::fs::symlink(&exe, &link) {
            eprintln!("satchel: {}: {e}", link.display());
            return ExitCode::FAILURE;
        }
        println!("{} -> {}", link.display(), exe.display());
    }
    ExitCode::SUCCESS
}

/// Loads `tls_cert`/`tls_key` (when set) and offers STARTTLS.
fn with_tls(ctx: Context) -> Result<Context, String> {
    match (&ctx.cfg.tls_cert, &ctx.cfg.tls_key) {
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => {
            let tls = satchel::tls::server_config(cert, key)?;
            Ok(ctx.with_tls(tls))
        }
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => {
            Err("tls_cert is set, but this satchel was built without the tls feature".into())
        }
        _ => Ok(ctx),
    }
}

/// Takes the runner lock, waiting for a `queue run` that holds it.
fn runner_lock(spool: &Spool) -> Result<std::fs::File, ExitCode> {
    let fail = |e: std::io::Error| {
        log::error!("fatal: spool {}: runner lock: {e}", spool.root().display());
        ExitCode::FAILURE
    };
    match spool.try_runner_lock() {
        Ok(Some(f)) => Ok(f),
        Ok(None) => {
            log::info!("waiting for the running queue run to finish");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(spool.root().join("runner.lock"))
                .map_err(fail)?;
            f.lock().map_err(fail)?;
            Ok(f)
        }
        Err(e) => Err(fail(e)),
    }
}

/// `satchel inetd`: one session on stdin/stdout, then a detached queue
/// run if no runner is alive and a message was queued.
/// One session on stdin/stdout; `local`: `sendmail -bs`.
fn inetd(cfg: Config, local: bool) -> ExitCode {
    init_logging_to(&cfg, LogTo::Syslog);
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            log::error!("fatal: {e}");
            println!(
                "421 4.3.0 {} Service temporarily unavailable\r",
                cfg.hostname
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let spool = match Spool::open(&cfg.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            log::error!("fatal: spool {}: {e}", cfg.spool_dir.display());
            println!(
                "421 4.3.0 {} Service temporarily unavailable\r",
                cfg.hostname
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = become_service_user(&cfg, false) {
        log::error!("fatal: {e}");
        println!(
            "421 4.3.0 {} Service temporarily unavailable\r",
            cfg.hostname
        );
        return ExitCode::FAILURE;
    }
    if !local && satchel::os::euid() == 0 {
        log::warn!("warning: inetd: serving SMTP as root; set `user` in the configuration to drop privileges");
    }
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = cfg.source.clone();
    let mut ctx = match with_tls(Context::new(cfg, policy, spool.clone())) {
        Ok(c) => c,
        Err(e) => {
            log::error!("fatal: {e}");
            println!("421 4.3.0 Service temporarily unavailable\r");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    ctx.on_queued = Some({
        let queued = queued.clone();
        Arc::new(move |_| {
            queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
    });
    // sendmail -bs by a user who may not write the spool: the maildrop.
    ctx.maildrop_fallback = local;
    let client = satchel::stdio::serve(&ctx, local);
    let queued = queued.load(std::sync::atomic::Ordering::Relaxed);
    log::info!(
        "disconnect from {}: {queued} message(s) queued",
        client
            .ip
            .map(|i| format!("[{i}]"))
            .unwrap_or_else(|| "localhost".into())
    );
    if queued > 0 && !ctx.cfg.defer_delivery {
        delivery::kick_runner(&spool, source.as_deref());
    }
    ExitCode::SUCCESS
}

/// `satchel queue run`: deliver what is due once and exit. A no-op when
/// another runner (the daemon, or another run) holds the lock.
fn queue_run(cfg: Config) -> ExitCode {
    init_logging(&cfg);
    // Read as root, like the daemon does (a root-only credentials file).
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let problems = satchel::preflight::directories(&cfg);
    for p in &problems {
        log::error!("fatal: {p}");
    }
    if !problems.is_empty() {
        return ExitCode::from(EXIT_CONFIG);
    }
    // From root's cron: deliver as the service user, never as root.
    if let Err(e) = become_service_user(&cfg, false) {
        log::error!("fatal: {e}");
        return ExitCode::FAILURE;
    }
    let spool = match open_spool(&cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    // A session's probe of the lock (kick_runner) holds it for an instant:
    // look a few times before concluding that another runner is active.
    let mut attempt = spool.try_runner_lock();
    for _ in 0..10 {
        if !matches!(attempt, Ok(None)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        attempt = spool.try_runner_lock();
    }
    let _lock = match attempt {
        Ok(Some(l)) => l,
        Ok(None) => {
            log::info!("a queue runner is already active; nothing to do");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log::error!("fatal: spool {}: runner lock: {e}", cfg.spool_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = spool.recover() {
        log::error!(
            "fatal: spool {}: recovery failed: {e}",
            cfg.spool_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let resolver = match resolver(&cfg) {
        Ok(r) => r,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = Arc::new(Deliverer::new(
        cfg,
        spool,
        policy,
        Arc::from(resolver),
        Handoff::new(),
    ));
    let n = delivery::run_once(&d, false);
    log::info!("queue run: {n} message(s) processed");
    ExitCode::SUCCESS
}

/// DNS: the configured servers, else those of /etc/resolv.conf.
fn resolver(cfg: &Config) -> Result<Box<dyn Resolver>, String> {
    let timeout = cfg.dns_timeout;
    if !cfg.dns_servers.is_empty() {
        return Ok(Box::new(DnsResolver::new(
            cfg.dns_servers.clone(),
            timeout,
            2,
        )));
    }
    match DnsResolver::from_resolv_conf(std::path::Path::new("/etc/resolv.conf")) {
        Ok(r) => Ok(Box::new(r)),
        // With a smarthost by IP address no DNS is needed at all.
        Err(e)
            if cfg
                .relayhost
                .as_ref()
                .is_some_and(|r| r.host.parse::<std::net::IpAddr>().is_ok()) =>
        {
            log::info!("no DNS ({e}); all mail goes to the relayhost");
            Ok(Box::new(DnsResolver::new(Vec::new(), timeout, 1)))
        }
        Err(e) => Err(format!("DNS: {e} (set dns_servers)")),
    }
}

/// The spool, made when missing (`queue run`).
fn open_spool(cfg: &Config) -> Result<Spool, ExitCode> {
    Spool::open(&cfg.spool_dir).map_err(|e| {
        eprintln!(
            "satchel: {}",
            satchel::preflight::explain(&e, "spool_dir", &cfg.spool_dir)
        );
        ExitCode::FAILURE
    })
}

/// The spool as it is, for the tools that only look or move one message:
/// they never create it. `Ok(None)` when it does not exist yet. Without a
/// configuration file, says which spool it looked at.
fn existing_spool(cfg: &Config) -> Result<Option<Spool>, ExitCode> {
    if cfg.source.is_none() {
        eprintln!(
            "satchel: no configuration file ({} or -c FILE); spool {}",
            satchel::config::SYSTEM_CONFIG,
            absolute(&cfg.spool_dir).display()
        );
    }
    match Spool::open_existing(&cfg.spool_dir) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            eprintln!(
                "satchel: {}",
                satchel::preflight::explain(&e, "spool_dir", &cfg.spool_dir)
            );
            Err(ExitCode::FAILURE)
        }
    }
}

fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn queue_flush(cfg: &Config) -> ExitCode {
    init_logging_to(cfg, LogTo::Syslog);
    match delivery::request_flush(&cfg.spool_dir) {
        Ok(answer) if answer == "ok" => {
            let n = match Spool::open_existing(&cfg.spool_dir) {
                Ok(s) => queue::waiting(&s),
                Err(_) => 0,
            };
            println!("queue flush requested: {n} waiting message(s) to try now (held ones stay)");
            log::info!("queue flush requested: {n} waiting message(s)");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!("satchel: server answered: {answer}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "satchel: no running server answers on {}: {e}",
                delivery::control_path(&cfg.spool_dir).display()
            );
            ExitCode::FAILURE
        }
    }
}

fn check_config(cfg: &Config) -> ExitCode {
    if let Err(e) = LocalPolicy::load(cfg) {
        eprintln!("satchel: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let problems = satchel::preflight::check(cfg);
    for p in &problems {
        eprintln!("satchel: {p}");
    }
    if !problems.is_empty() {
        return ExitCode::from(EXIT_CONFIG);
    }
    match &cfg.source {
        Some(p) => println!("# {} is valid; effective settings:", p.display()),
        None => println!(
            "# no configuration file ({} or -c FILE); built-in defaults, spool {}:",
            satchel::config::SYSTEM_CONFIG,
            absolute(&cfg.spool_dir).display()
        ),
    }
    print!("{}", cfg.render());
    ExitCode::SUCCESS
}

/// `queue list [--json]`.
fn queue_list(cfg: &Config, json: bool) -> ExitCode {
    let spool = match existing_spool(cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let listed = match &spool {
        Some(spool) => queue::write_list(spool, json, &mut w),
        // Nothing received yet: nothing to list, and nothing is made.
        None if json => Ok(()),
        None => writeln!(w, "Mail queue is empty"),
    };
    let listed = listed.and_then(|()| {
        // Submissions not picked up yet (the daemon down, say): counted
        // for whoever may list maildrop/ (root, the service user).
        let waiting = std::fs::read_dir(satchel::maildrop::dir(&cfg.spool_dir))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        if waiting > 0 && !json {
            writeln!(
                w,
                "-- {waiting} submission(s) in maildrop/, not picked up yet"
            )?;
        }
        std::io::Write::flush(&mut w)
    });
    match listed {
        Ok(()) => ExitCode::SUCCESS,
        // `satchel queue list | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("satchel: spool {}: {e}", cfg.spool_dir.display());
            ExitCode::FAILURE
        }
    }
}

/// `queue show|delete|hold|release ID` (delete also takes ALL). What
/// changes the queue is logged, as Postfix's postsuper logs it.
fn queue_tool(cfg: &Config, verb: &str, id: &str) -> ExitCode {
    init_logging_to(cfg, LogTo::Syslog);
    let spool = match existing_spool(cfg) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("satchel: {id}: no such message in the queue (no spool yet)");
            return ExitCode::FAILURE;
        }
        Err(c) => return c,
    };
    let said = |line: String| {
        println!("{line}");
        log::info!("{line}");
    };
    let result = match verb {
        "show" => queue::show(&spool, id).map(|t| print!("{t}")),
        "delete" if id.eq_ignore_ascii_case("all") => queue::delete_all(&spool)
            .map(|n| said(format!("queue delete ALL: {n} message(s) deleted"))),
        "delete" => queue::delete(&spool, id).map(|()| said(format!("{id}: removed"))),
        "hold" => queue::hold(&spool, id).map(|moved| match moved {
            true => said(format!("{id}: placed on hold")),
            false => println!("{id}: already on hold"),
        }),
        "release" => queue::release(&spool, id).map(|moved| match moved {
            true => {
                said(format!("{id}: released from hold"));
                delivery::release(&spool, id, cfg.source.as_deref());
            }
            false => println!("{id}: not on hold; it waits for its next attempt as before"),
        }),
        _ => unreachable!("verbs are matched by the caller"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("satchel: {e}");
            ExitCode::from(if matches!(e, queue::QueueError::BadId(_)) {
                EXIT_CONFIG
            } else {
                1
            })
        }
    }
}
