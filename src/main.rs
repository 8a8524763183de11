//! The `satchel` command: argument parsing and wiring only.
//!
//! ```text
//! satchel serve [-c FILE]          run the SMTP server in the foreground
//! satchel check-config [-c FILE]   validate and print the effective settings
//! satchel queue list [-c FILE]     mailq-style listing of the spool
//! ```

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use satchel::config::Config;
use satchel::conn::Context;
use satchel::envelope::RcptState;
use satchel::policy::LocalPolicy;
use satchel::spool::{QueueState, Spool};
use satchel::{server, time};

/// Exit status for a bad configuration or bad usage.
const EXIT_CONFIG: u8 = 2;

const USAGE: &str = "usage: satchel serve [-c FILE]
       satchel check-config [-c FILE]
       satchel queue list [-c FILE]";

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
    let ctx = Context::new(cfg, policy, spool);
    let listeners = match server::bind(&ctx) {
        Ok(l) => l,
        Err(e) => {
            log::error!("fatal: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server::serve(Arc::new(ctx), listeners) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
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
    let spool = match Spool::open(&cfg.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("satchel: spool {}: {e}", cfg.spool_dir.display());
            return ExitCode::FAILURE;
        }
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
