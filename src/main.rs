//! The `satchel` command: argument parsing and wiring only.
//!
//! ```text
//! satchel serve [-c FILE] [-p PIDFILE]   the daemon, in the foreground
//! satchel inetd [-c FILE]                 one SMTP session on stdin/stdout
//! satchel check-config [-c FILE]          validate and print the effective settings
//! satchel queue run [-c FILE]             deliver what is due once, then exit (cron)
//! satchel queue list [--json] [-c FILE]   mailq-style listing of the spool
//! satchel queue flush [-c FILE]           ask the running server to retry everything now
//! satchel queue check [--max-age T] [--max-count N]  a monitoring plugin (Nagios exit codes)
//! satchel queue show|hold|release ID      inspect, hold back, let go
//! satchel queue delete ID|ALL             remove
//! satchel dkim-keygen DOMAIN SELECTOR [-o KEYFILE]  a new Ed25519 DKIM key and its TXT record
//! satchel dkim-record KEYFILE            the TXT record of a DKIM key (Ed25519 or RSA)
//! satchel sendmail [options] [rcpt...]    the sendmail command (also via a `sendmail`,
//!                                         `mailq` or `newaliases` symlink)
//! ```

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use satchel::config::Config;
use satchel::delivery::{self, Deliverer};
use satchel::handoff::Handoff;
use satchel::logging::{self, LogTo};
use satchel::policy::LocalPolicy;
use satchel::receive::Context;
use satchel::sendmail::{self, Mode};
use satchel::spool::Spool;
use satchel::{queue, server};

/// Exit status for a bad configuration or bad usage.
const EXIT_CONFIG: u8 = 2;

const USAGE: &str = "usage: satchel COMMAND [-c FILE]
  serve [-p PIDFILE]          the daemon, in the foreground
  inetd                       one SMTP session on stdin/stdout (inetd, xinetd, systemd)
  check-config                check the configuration and print the settings in force
  queue list [--json]         list the queue (as mailq)
  queue run                   deliver what is due once, then exit (cron)
  queue flush                 ask the running server to try everything now
  queue check [--max-age T] [--max-count N]
                              one Nagios status line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
  queue show|hold|release ID  show a message, keep it back, let it go
  queue delete ID|ALL         remove a message, or every message not being delivered
  route ADDRESS [--sender S]  where mail for ADDRESS would go (nothing is sent)
  install-links DIR           make DIR/sendmail, DIR/mailq and DIR/newaliases
  dkim-keygen DOMAIN SELECTOR [-o KEYFILE]
                              write a new Ed25519 DKIM key, print its DNS TXT record
  dkim-record KEYFILE         print the DNS TXT record of a DKIM key (Ed25519 or RSA)
  sendmail [options] [rcpt]   the sendmail command (satchel sendmail --help)
  --version, --help
Also runs as sendmail, mailq and newaliases when called by those names
(see install-links). -c FILE, else $SATCHEL_CONFIG, else /etc/satchel/satchel.conf.";

/// The commands of the usage, for "did you mean".
const COMMANDS: [&str; 9] = [
    "serve",
    "inetd",
    "check-config",
    "queue",
    "route",
    "install-links",
    "dkim-keygen",
    "dkim-record",
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
    let opts = options();
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
    // The key tools and the file writer need no configuration.
    match words.as_slice() {
        ["deliver-file", path] => return deliver_file(path),
        ["dkim-keygen", domain, selector] => return dkim_keygen(domain, selector, m.opt_str("o")),
        ["dkim-record", path] => return dkim_record(path),
        _ => {}
    }
    let cfg = match Config::locate(m.opt_str("c").as_deref()) {
        Ok(c) => c,
        // Under inetd, stdout and stderr are the client's socket: it gets a
        // 421, and the reason goes to syslog, never to the peer.
        Err(e) if words == ["inetd"] => {
            logging::init(&Config::default(), LogTo::Syslog);
            return unavailable(None, &e.to_string(), EXIT_CONFIG);
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
        ["route", address] => route(&cfg, address, m.opt_str("sender").as_deref()),
        ["queue", "list"] | ["queue"] => queue_list(&cfg, m.opt_present("json")),
        ["queue", "flush"] => queue_flush(&cfg),
        ["queue", "check"] => queue_check(&cfg, m.opt_str("max-age"), m.opt_str("max-count")),
        ["queue", verb @ ("show" | "delete" | "hold" | "release"), id] => {
            queue_tool(&cfg, verb, id)
        }
        _ => {
            eprintln!("satchel: {}\n{USAGE}", unknown_command(&words));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The options of the `satchel` command line.
fn options() -> getopts::Options {
    let mut opts = getopts::Options::new();
    opts.optopt("c", "config", "configuration file", "FILE");
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    opts.optflag("", "json", "queue list: one JSON object per message");
    opts.optopt("", "sender", "route: the envelope sender", "ADDRESS");
    opts.optopt(
        "o",
        "output",
        "dkim-keygen: the key file to write",
        "KEYFILE",
    );
    opts.optopt("", "max-age", "queue check: critical past this age", "TIME");
    opts.optopt("", "max-count", "queue check: critical past this many", "N");
    opts.optopt(
        "p",
        "pidfile",
        "serve: write the process ID to FILE",
        "FILE",
    );
    opts
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

fn serve(cfg: Config, pidfile: Option<String>) -> ExitCode {
    logging::init(&cfg, LogTo::Stderr);
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Everything it would die on later, before it creates anything.
    let problems = satchel::preflight::check(&cfg, satchel::preflight::Start::ThisProcess);
    for p in &problems {
        log::error!("fatal: {p}");
    }
    if !problems.is_empty() {
        return ExitCode::from(EXIT_CONFIG);
    }
    match run_daemon(cfg, policy, pidfile.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(why, code)) => {
            log::error!("fatal: {why}");
            ExitCode::from(code)
        }
    }
}

/// Why the daemon stops, and its exit status.
struct Fatal(String, u8);

fn failure(why: impl std::fmt::Display) -> Fatal {
    Fatal(why.to_string(), 1)
}

fn bad_config(why: impl std::fmt::Display) -> Fatal {
    Fatal(why.to_string(), EXIT_CONFIG)
}

/// The daemon's life: the spool taken and recovered, listeners bound,
/// privileges dropped, delivery started, sessions served until a signal
/// stops it, deliveries under way waited for.
fn run_daemon(cfg: Config, policy: LocalPolicy, pidfile: Option<&str>) -> Result<(), Fatal> {
    let policy = Arc::new(policy);
    let inbox = Handoff::<delivery::Event>::new();
    let (spool, _runner) = take_spool(&cfg, &inbox)?;
    let resolver = satchel::dns::from_config(&cfg).map_err(failure)?;
    let mut ctx =
        with_tls(Context::new(cfg.clone(), policy.clone(), spool.clone())).map_err(bad_config)?;
    ctx.on_queued = Some({
        let inbox = inbox.clone();
        Arc::new(move |id| inbox.send(delivery::Event::Queued(id)))
    });
    check_root_ports(&cfg).map_err(bad_config)?;
    let listeners = server::bind(&ctx).map_err(failure)?;
    if let Some(p) = pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| failure(format!("pid file {p}: {e}")))?;
    }
    become_service_user(&cfg, true).map_err(failure)?;
    if let Some(path) = &cfg.metrics_file {
        satchel::metrics::spawn_writer(path.clone(), cfg.metrics_interval, spool.clone());
    }
    let deliverer = Deliverer::new(cfg.clone(), spool, policy, Arc::from(resolver), inbox);
    let delivery_slot: delivery::Slot = Arc::new(RwLock::new(Arc::new(deliverer)));
    if cfg.defer_delivery {
        log::info!("defer_delivery = yes: mail is queued, not delivered");
    } else {
        delivery::start(delivery_slot.clone())
            .map_err(|e| failure(format!("cannot start delivery: {e}")))?;
    }
    let ctx_slot: server::ContextSlot = Arc::new(RwLock::new(Arc::new(ctx)));
    let (delivering, shutdown_timeout) = (!cfg.defer_delivery, cfg.shutdown_timeout);
    let reload = reloader(cfg, ctx_slot.clone(), delivery_slot);
    let result = server::serve(ctx_slot, listeners, reload);
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
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
    result.map_err(failure)
}

/// The daemon's spool: opened (made when missing), the control socket
/// bound (a second server on the same spool stops here, before it touches
/// anything), the runner lock held for life, and recovered.
fn take_spool(
    cfg: &Config,
    inbox: &Handoff<delivery::Event>,
) -> Result<(Spool, std::fs::File), Fatal> {
    let spool = Spool::open(&cfg.spool_dir)
        .map_err(|e| failure(satchel::preflight::explain(&e, "spool_dir", &cfg.spool_dir)))?;
    // The daemon lives long: it keeps delivered messages' files for reuse.
    spool.enable_recycling();
    if let Err(e) = satchel::spool::maildrop::prepare(spool.root()) {
        log::warn!(
            "warning: spool {}: cannot prepare maildrop/: {e}",
            cfg.spool_dir.display()
        );
    }
    delivery::control_socket(&cfg.spool_dir, inbox.clone()).map_err(failure)?;
    let root = cfg.spool_dir.display();
    let runner = spool
        .wait_runner_lock()
        .map_err(|e| failure(format!("spool {root}: runner lock: {e}")))?;
    let r = spool
        .recover()
        .map_err(|e| failure(format!("spool {root}: recovery failed: {e}")))?;
    log::info!(
        "spool {root}: {} queued, {} requeued from active, {} temporary and {} orphaned files removed",
        r.queued,
        r.requeued,
        r.tmp_removed,
        r.orphans_removed
    );
    Ok((spool, runner))
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
        let policy = Arc::new(LocalPolicy::load(&cfg)?);
        // dns_servers, dns_timeout and /etc/resolv.conf, read again.
        let dns: Arc<dyn satchel::dns::Resolver> = Arc::from(satchel::dns::from_config(&cfg)?);
        for name in Config::needs_restart(&start, &cfg) {
            log::warn!("warning: {name} changed: it takes effect at the next restart");
        }
        let old = ctx_slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut ctx = with_tls(Context::new(cfg.clone(), policy.clone(), old.spool.clone()))?;
        ctx.on_queued = old.on_queued.clone();
        ctx.shutdown = old.shutdown.clone();
        ctx.anvil = old.anvil.clone();
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
        Mode::Smtp => inetd(cfg, true),
        Mode::ListQueue => queue_list(&cfg, false),
        // A running daemon delivers: ask it, as `queue flush` does.
        Mode::RunQueue
            if delivery::request_flush(&cfg.spool_dir).is_ok_and(|a| a.starts_with("ok")) =>
        {
            ExitCode::SUCCESS
        }
        Mode::RunQueue => queue_run(cfg),
        Mode::CheckAliases => match satchel::aliases::Aliases::load(&cfg.aliases_file) {
            Ok(a) => {
                println!("{}: {} aliases", cfg.aliases_file.display(), a.map.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("newaliases: {e}");
                ExitCode::from(sendmail::EX_DATAERR)
            }
        },
        Mode::Deliver | Mode::Help | Mode::Version => match submit(&cfg, &o) {
            Ok(code) => code,
            Err((code, msg)) => {
                eprintln!("sendmail: {msg}");
                ExitCode::from(code)
            }
        },
    }
}

/// `sendmail` reading a message: queued as the service user (root's cron
/// too, so that the daemon owns what it has to rewrite and link; the
/// `Received:` line still names the invoker), then delivery kicked.
fn submit(cfg: &Config, o: &sendmail::Options) -> Result<ExitCode, (u8, String)> {
    logging::init(
        cfg,
        if o.verbose {
            LogTo::Stderr
        } else {
            LogTo::Syslog
        },
    );
    let policy = LocalPolicy::load(cfg).map_err(|e| (sendmail::EX_CONFIG, e))?;
    let invoker = sendmail::submit::invoking_user();
    become_service_user(cfg, false).map_err(|e| (sendmail::EX_TEMPFAIL, e))?;
    let spool = Spool::open(&cfg.spool_dir).map_err(|e| {
        let why = satchel::preflight::explain(&e, "spool_dir", &cfg.spool_dir);
        (sendmail::EX_TEMPFAIL, why)
    })?;
    let input = read_message(o.ignore_dots)
        .map_err(|e| (sendmail::EX_TEMPFAIL, format!("reading the message: {e}")))?;
    let (id, unknown) = sendmail::submit::run(cfg, &policy, &spool, o, &input, invoker)?;
    if o.verbose {
        eprintln!("sendmail: queued as {id}");
    }
    if !cfg.defer_delivery {
        delivery::kick_runner(&spool, cfg.source.as_deref());
    }
    if unknown.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // Sent to the others; sendmail's word for the rest.
    eprintln!("sendmail: {}", unknown.join("; "));
    Ok(ExitCode::from(sendmail::EX_NOUSER))
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
    let account = satchel::os::Account::lookup(user, cfg.group.as_deref())?;
    std::fs::create_dir_all(&cfg.mail_dir)
        .map_err(|e| format!("{}: {e}", cfg.mail_dir.display()))?;
    let handed_over = |top: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(top).is_ok_and(|m| m.uid() == account.uid)
    };
    if thorough || !handed_over(&cfg.spool_dir) {
        satchel::spool::hand_over(&cfg.spool_dir, account.uid, account.gid)
            .map_err(|e| format!("chown {}: {e}", cfg.spool_dir.display()))?;
    }
    if thorough || !handed_over(&cfg.mail_dir) {
        satchel::os::chown_tree(&cfg.mail_dir, account.uid, account.gid, 3, None)
            .map_err(|e| format!("chown {}: {e}", cfg.mail_dir.display()))?;
    }
    account.become_it()?;
    log::info!(
        "running as {user} (uid {}, gid {})",
        account.uid,
        account.gid
    );
    Ok(())
}

/// `route ADDRESS [--sender S]`: the transport and next hops mail for
/// ADDRESS would get, as the routing stage decides them, with the MX hosts
/// looked up; nothing is sent (as Postfix's `postmap -q` and `sendmail
/// -bv` let an administrator check).
fn route(cfg: &Config, address: &str, sender: Option<&str>) -> ExitCode {
    let policy = match LocalPolicy::load(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let origin = cfg.myorigin();
    let parsed = sendmail::recipient(address, &origin).and_then(|r| {
        let from = sendmail::sender(sender.unwrap_or("<>"), &origin)?;
        Ok((r, from))
    });
    let (rcpt, from) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Rewriting (canonical tables, masquerading) as the queue would get it.
    let (rcpt, from) = rewritten(&policy, rcpt, from);
    // Virtual aliases and aliases first: then the route of each target.
    match delivery::expand::targets_of(cfg, &policy, &rcpt) {
        None => println!(
            "{}: {}",
            rcpt.bare(),
            route_text(cfg, &policy, &rcpt, &from)
        ),
        Some(Err(why)) => println!("{}: error: {why}", rcpt.bare()),
        Some(Ok(targets)) => {
            let names: Vec<String> = targets.iter().map(|t| t.shown()).collect();
            println!("{}: expands to {}", rcpt.bare(), names.join(", "));
            for t in &targets {
                let route = match &t.via {
                    Some(v) if v.is_command() => "pipe: run for it".to_string(),
                    Some(_) => "file: appended to".to_string(),
                    None => route_text(cfg, &policy, &t.addr, &from),
                };
                println!("  {}: {route}", t.shown());
            }
        }
    }
    ExitCode::SUCCESS
}

/// The recipient and sender as queued, each change shown.
fn rewritten(
    policy: &LocalPolicy,
    rcpt: satchel::address::ForwardPath,
    from: satchel::address::ReversePath,
) -> (satchel::address::ForwardPath, satchel::address::ReversePath) {
    let (new_rcpt, new_from) = (
        policy.rewriter.forward_path(&rcpt),
        policy.rewriter.reverse_path(&from),
    );
    if new_rcpt != rcpt {
        println!("{}: rewritten to {}", rcpt.bare(), new_rcpt.bare());
    }
    if new_from != from {
        println!("sender {from}: rewritten to {new_from}");
    }
    (new_rcpt, new_from)
}

/// The transport and next hops of one (expanded) recipient.
fn route_text(
    cfg: &Config,
    policy: &LocalPolicy,
    rcpt: &satchel::address::ForwardPath,
    from: &satchel::address::ReversePath,
) -> String {
    match delivery::next_hop(policy, rcpt) {
        delivery::Hop::Local => format!("local: mailbox of {}", rcpt.bare()),
        delivery::Hop::Lmtp(target) => format!("lmtp: {} to {target}", rcpt.bare()),
        delivery::Hop::Command => format!(
            "pipe: mailbox_command {}",
            cfg.mailbox_command.as_deref().unwrap_or("")
        ),
        delivery::Hop::Settled(state) => format!(
            "{}: {}",
            if state.is_open() { "defer" } else { "error" },
            state.status().map(ToString::to_string).unwrap_or_default()
        ),
        delivery::Hop::Smtp(domain, table) => {
            let (via, _) = delivery::relay_hosts(cfg, policy, from, table);
            smtp_route(cfg, &domain, &via)
        }
    }
}

/// `smtp: [a]:25, [b]:25` for hosts a route names, else the domain's MX
/// hosts in the order they would be tried.
fn smtp_route(cfg: &Config, domain: &str, via: &[satchel::transport::smtp::Relayhost]) -> String {
    if !via.is_empty() {
        let hosts: Vec<String> = via.iter().map(ToString::to_string).collect();
        return format!("smtp via {}", hosts.join(", "));
    }
    let mx = satchel::dns::from_config(cfg).and_then(|dns| {
        dns.mx(domain)
            .map_err(|e| format!("MX look-up of {domain}: {e:?}"))
    });
    match mx.map(|mxs| satchel::transport::smtp::order_mx(domain, mxs, &cfg.hostname)) {
        Ok(Ok(hops)) => {
            let names: Vec<String> = hops.into_iter().map(|h| h.name).collect();
            format!("smtp to the MX hosts of {domain}: {}", names.join(", "))
        }
        Ok(Err(status)) => format!("error: {status}"),
        Err(e) => format!("smtp to the MX hosts of {domain} ({e})"),
    }
}

/// `dkim-keygen DOMAIN SELECTOR`: a new Ed25519 key (RFC 8463) in a file
/// only its owner may read, its `dkim_keys_file` line and its TXT record.
#[cfg(feature = "tls")]
fn dkim_keygen(domain: &str, selector: &str, out: Option<String>) -> ExitCode {
    use std::os::unix::fs::OpenOptionsExt;
    let path = out.unwrap_or_else(|| format!("{domain}.{selector}.key"));
    let written = satchel::dkim::generate_ed25519().and_then(|(pem, record)| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| format!("{path}: {e}"))?;
        Ok(record)
    });
    match written {
        Ok(record) => {
            let full =
                std::fs::canonicalize(&path).map_or(path.clone(), |p| p.display().to_string());
            eprintln!("wrote {path} (Ed25519, PKCS#8; readable by its owner only)");
            eprintln!("for dkim_keys_file: {domain} {selector} {full}");
            eprintln!("publish in DNS:");
            println!("{selector}._domainkey.{domain}. IN TXT \"{record}\"");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("satchel: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `dkim-record KEYFILE`: the TXT record of a PKCS#8 key, Ed25519 or RSA
/// (e.g. from `openssl genpkey`).
#[cfg(feature = "tls")]
fn dkim_record(path: &str) -> ExitCode {
    match satchel::dkim::record_of(std::path::Path::new(path)) {
        Ok(record) => {
            println!("{record}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("satchel: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "tls"))]
fn dkim_keygen(_: &str, _: &str, _: Option<String>) -> ExitCode {
    dkim_record("")
}

#[cfg(not(feature = "tls"))]
fn dkim_record(_: &str) -> ExitCode {
    eprintln!(
        "satchel: DKIM needs the tls build feature (ring); this satchel was built without it"
    );
    ExitCode::from(EXIT_CONFIG)
}

/// `deliver-file PATH` (run by the delivery of an alias's `/path/file`
/// target, as the account that may write it): the message on standard
/// input, its `Return-Path:` first, appended to PATH as an mbox under the
/// mail readers' locks. sysexits(3): a locked file 75 (try again), any
/// other failure 73, the reason on standard error.
fn deliver_file(path: &str) -> ExitCode {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut first = String::new();
    if input.read_line(&mut first).is_err() || !first.starts_with("Return-Path: ") {
        eprintln!("deliver-file: the message does not start with Return-Path:");
        return ExitCode::from(65);
    }
    let return_path = first["Return-Path: ".len()..].trim().to_string();
    let mut all = std::io::Read::chain(first.as_bytes(), input);
    match satchel::transport::local::append_mbox(std::path::Path::new(path), &return_path, &mut all)
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot append to {path}: {e}");
            let locked = e.kind() == std::io::ErrorKind::WouldBlock;
            ExitCode::from(if locked { 75 } else { 73 })
        }
    }
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

/// `satchel inetd`: one session on stdin/stdout (`local`: `sendmail
/// -bs`), then a detached queue run if no runner is alive and a message
/// was queued.
fn inetd(cfg: Config, local: bool) -> ExitCode {
    logging::init(&cfg, LogTo::Syslog);
    let hostname = cfg.hostname.clone();
    let (mut ctx, spool) = match inetd_context(cfg, local) {
        Ok(c) => c,
        Err((why, code)) => return unavailable(Some(&hostname), &why, code),
    };
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
        delivery::kick_runner(&spool, ctx.cfg.source.as_deref());
    }
    ExitCode::SUCCESS
}

/// What an inetd session needs, as the service user; or why it cannot
/// run, with the exit status.
fn inetd_context(cfg: Config, local: bool) -> Result<(Context, Spool), (String, u8)> {
    let policy = LocalPolicy::load(&cfg).map_err(|e| (e, EXIT_CONFIG))?;
    let spool = Spool::open(&cfg.spool_dir).map_err(|e| {
        let why = satchel::preflight::explain(&e, "spool_dir", &cfg.spool_dir);
        (why, 1)
    })?;
    become_service_user(&cfg, false).map_err(|e| (e, 1))?;
    if !local && satchel::os::euid() == 0 {
        log::warn!("warning: inetd: serving SMTP as root; set `user` in the configuration to drop privileges");
    }
    let ctx = with_tls(Context::new(cfg, Arc::new(policy), spool.clone()))
        .map_err(|e| (e, EXIT_CONFIG))?;
    Ok((ctx, spool))
}

/// An inetd session that cannot be served: the reason to syslog, never
/// to the peer, which hears 421 (RFC 5321 §3.8) on what is its socket.
fn unavailable(hostname: Option<&str>, why: &str, code: u8) -> ExitCode {
    log::error!("fatal: {why}");
    let name = hostname.map(|h| format!("{h} ")).unwrap_or_default();
    println!("421 4.3.0 {name}Service temporarily unavailable\r");
    ExitCode::from(code)
}

/// `satchel queue run`: deliver what is due once and exit. A no-op when
/// another runner (the daemon, or another run) holds the lock.
fn queue_run(cfg: Config) -> ExitCode {
    logging::init(&cfg, LogTo::Stderr);
    // Read as root, like the daemon does (a root-only credentials file).
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let problems = satchel::preflight::directories(&cfg, satchel::preflight::Start::ThisProcess);
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
    let resolver = match satchel::dns::from_config(&cfg) {
        Ok(r) => r,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = Arc::new(Deliverer::new(
        cfg,
        spool,
        Arc::new(policy),
        Arc::from(resolver),
        Handoff::new(),
    ));
    let n = delivery::run_once(&d, false);
    log::info!("queue run: {n} message(s) processed");
    ExitCode::SUCCESS
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

/// `queue check`: a monitoring plugin (Nagios's exit codes and line):
/// CRITICAL past `--max-age` or `--max-count`, WARNING past half of one
/// or with damaged files, UNKNOWN when the spool cannot be read.
fn queue_check(cfg: &Config, max_age: Option<String>, max_count: Option<String>) -> ExitCode {
    let unknown = |why: String| {
        println!("SATCHEL QUEUE UNKNOWN - {why}");
        ExitCode::from(3)
    };
    let age = match max_age.as_deref().map(satchel::config::parse_duration) {
        None => None,
        Some(Some(d)) => Some(d.as_secs()),
        Some(None) => return unknown("--max-age: expected a time such as 30m or 2h".into()),
    };
    let count = match max_count.as_deref().map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return unknown("--max-count: expected a number".into()),
    };
    let spool = match Spool::open_existing(&cfg.spool_dir) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (code, line) = queue::Health::default().verdict(0, age, count);
            println!("{line}");
            return ExitCode::from(code);
        }
        Err(e) => return unknown(format!("{}: {e}", cfg.spool_dir.display())),
    };
    let items = match spool.list() {
        Ok(i) => i,
        Err(e) => return unknown(format!("{}: {e}", cfg.spool_dir.display())),
    };
    let corrupt = spool.corrupt_count();
    let (code, line) =
        queue::Health::of(&items, corrupt).verdict(satchel::time::unix_now(), age, count);
    println!("{line}");
    ExitCode::from(code)
}

fn queue_flush(cfg: &Config) -> ExitCode {
    logging::init(cfg, LogTo::Syslog);
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
    let policy = match LocalPolicy::load(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let problems = satchel::preflight::check(cfg, satchel::preflight::Start::ByRoot);
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
    println!("# tables (entries): {}", policy.table_sizes());
    print!("{}", cfg.render());
    ExitCode::SUCCESS
}

/// `queue list [--json]`.
fn queue_list(cfg: &Config, json: bool) -> ExitCode {
    let spool = match existing_spool(cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    // The route each waiting recipient would take now, by the tables in
    // force; broken tables are reported and the listing goes on without.
    let policy = LocalPolicy::load(cfg)
        .map_err(|e| eprintln!("satchel: {e} (routes not shown)"))
        .ok();
    let route = |e: &satchel::envelope::Envelope, to: &satchel::address::ForwardPath| match &policy
    {
        Some(p) => delivery::route_name(cfg, p, &e.from, to),
        None => String::new(),
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let listed = match &spool {
        Some(spool) => queue::write_list(spool, json, &route, &mut w),
        // Nothing received yet: nothing to list, and nothing is made.
        None if json => Ok(()),
        None => writeln!(w, "Mail queue is empty"),
    };
    let listed = listed.and_then(|()| {
        // Submissions not picked up yet (the daemon down, say): counted
        // for whoever may list maildrop/ (root, the service user).
        let waiting = std::fs::read_dir(satchel::spool::maildrop::dir(&cfg.spool_dir))
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
    logging::init(cfg, LogTo::Syslog);
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
