//! The `satchel` command: argument parsing and wiring only.
//!
//! ```text
//! satchel serve [-c FILE]          run the SMTP server in the foreground
//! satchel check-config [-c FILE]   validate and print the effective settings
//! satchel queue list [-c FILE]     mailq-style listing of the spool
//! satchel queue flush [-c FILE]    ask the running server to retry everything now
//! satchel queue delete ID [-c FILE]
//! ```

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use satchel::config::Config;
use satchel::conn::Context;
use satchel::delivery::{self, Deliverer};
use satchel::dns::{DnsResolver, Resolver};
use satchel::envelope::RcptState;
use satchel::policy::LocalPolicy;
use satchel::spool::{is_queue_id, QueueState, Spool};
use satchel::{server, time};

/// Exit status for a bad configuration or bad usage.
const EXIT_CONFIG: u8 = 2;

const USAGE: &str = "usage: satchel serve [-c FILE]
       satchel check-config [-c FILE]
       satchel queue list [-c FILE]
       satchel queue flush [-c FILE]
       satchel queue delete ID [-c FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = getopts::Options::new();
    opts.optopt("c", "config", "configuration file", "FILE");
    opts.optflag("h", "help", "print this help");
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
    let cfg = match Config::locate(m.opt_str("c").as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let words: Vec<&str> = m.free.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["serve"] => serve(cfg),
        ["check-config"] => check_config(&cfg),
        ["queue", "list"] | ["queue"] => queue_list(&cfg),
        ["queue", "flush"] => queue_flush(&cfg),
        ["queue", "delete", id] => queue_delete(&cfg, id),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn init_logging(cfg: &Config) {
    let mut b = env_logger::Builder::new();
    b.filter_level(cfg.log_level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
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
    let _ = b.try_init();
}

fn serve(cfg: Config) -> ExitCode {
    init_logging(&cfg);
    let policy = match LocalPolicy::load(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("satchel: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let spool = match Spool::open(&cfg.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            log::error!("fatal: spool {}: {e}", cfg.spool_dir.display());
            return ExitCode::FAILURE;
        }
    };
    // Before recovery: a second server on the same spool must not touch it.
    let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    if let Err(e) = delivery::control_socket(&cfg.spool_dir, ctl_tx) {
        log::error!("fatal: {e}");
        return ExitCode::FAILURE;
    }
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
    let mut ctx = Context::new(cfg.clone(), policy.clone(), spool.clone());
    ctx.on_queued = Some(wake_tx.clone());
    let listeners = match server::bind(&ctx) {
        Ok(l) => l,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cfg.defer_delivery {
        log::info!("defer_delivery = yes: mail is queued, not delivered");
    } else {
        let deliverer = Arc::new(Deliverer::new(cfg, spool, policy, resolver, wake_tx));
        if let Err(e) = delivery::start(deliverer, wake_rx, ctl_rx) {
            log::error!("fatal: cannot start delivery: {e}");
            return ExitCode::FAILURE;
        }
    }
    match server::serve(Arc::new(ctx), listeners) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            ExitCode::FAILURE
        }
    }
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

fn open_spool(cfg: &Config) -> Result<Spool, ExitCode> {
    Spool::open(&cfg.spool_dir).map_err(|e| {
        eprintln!("satchel: spool {}: {e}", cfg.spool_dir.display());
        ExitCode::FAILURE
    })
}

fn queue_flush(cfg: &Config) -> ExitCode {
    match delivery::request_flush(&cfg.spool_dir) {
        Ok(answer) if answer == "ok" => {
            println!("queue flush requested");
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

fn queue_delete(cfg: &Config, id: &str) -> ExitCode {
    let spool = match open_spool(cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if !is_queue_id(id) {
        eprintln!("satchel: '{id}' is not a queue ID");
        return ExitCode::from(EXIT_CONFIG);
    }
    if spool.dir("active").join(id).exists() {
        eprintln!("satchel: {id} is being delivered right now; try again in a moment");
        return ExitCode::FAILURE;
    }
    match std::fs::remove_file(spool.dir("queue").join(id)) {
        Ok(()) => {
            let _ = std::fs::remove_file(spool.msg_path(id));
            println!("{id}: deleted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("satchel: {id}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(cfg: &Config) -> ExitCode {
    if let Err(e) = LocalPolicy::load(cfg) {
        eprintln!("satchel: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match &cfg.source {
        Some(p) => println!("# {} is valid; effective settings:", p.display()),
        None => println!("# no configuration file; built-in defaults:"),
    }
    print!("{}", cfg.render());
    ExitCode::SUCCESS
}

/// A listing in the style of Postfix's mailq.
fn queue_list(cfg: &Config) -> ExitCode {
    let spool = match open_spool(cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let items = match spool.list() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("satchel: spool {}: {e}", cfg.spool_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if items.is_empty() {
        println!("Mail queue is empty");
        return ExitCode::SUCCESS;
    }
    let mut out = String::new();
    out.push_str("-Queue ID-------- --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    let (mut total, mut count) = (0u64, 0usize);
    for item in items {
        match item {
            Ok((state, e)) => {
                let mark = if state == QueueState::Active {
                    "*"
                } else {
                    " "
                };
                out.push_str(&format!(
                    "{}{mark} {:>8} {:>20}  {}\n",
                    e.id,
                    e.size,
                    time::mailq(e.created),
                    e.from
                        .to_string()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                ));
                for r in &e.rcpts {
                    let (word, why) = match &r.state {
                        RcptState::Pending => ("pending", String::new()),
                        RcptState::Deferred(t) => ("deferred", format!(": {t}")),
                        RcptState::Sent(t) => ("sent", format!(": {t}")),
                        RcptState::Failed(t) => ("failed", format!(": {t}")),
                    };
                    let next = if matches!(r.state, RcptState::Deferred(_)) && e.next_attempt > 0 {
                        format!(", next attempt {}", time::iso8601(e.next_attempt))
                    } else {
                        String::new()
                    };
                    let addr = r.addr.to_string();
                    out.push_str(&format!(
                        "{:48}{} ({word}{next}){why}\n",
                        "",
                        addr.trim_start_matches('<').trim_end_matches('>'),
                    ));
                }
                out.push('\n');
                total += e.size;
                count += 1;
            }
            Err(msg) => out.push_str(&format!("damaged envelope: {msg}\n\n")),
        }
    }
    out.push_str(&format!(
        "-- {} Kbytes in {count} Request{}.\n",
        total.div_ceil(1024),
        if count == 1 { "" } else { "s" }
    ));
    print!("{out}");
    ExitCode::SUCCESS
}
