//! One message's delivery attempt, as a short sequence of named stages.
//! Each stage takes the `Attempt` (the claimed message, its envelope and
//! what has been recorded of it) and says what it may assume and what it
//! leaves behind:
//!
//! | stage | assumes | guarantees |
//! |---|---|---|
//! | `claim_and_triage` | the message was claimed (`active/<id>`) | a readable queue file of this ID, or the message set aside (`corrupt/`) or requeued |
//! | `expand` | open recipients as queued | local aliases replaced by their targets (`expanded`), and that recorded before anything is delivered |
//! | `route` | expanded recipients | each open recipient in exactly one `Route`: a transport and its next hop |
//! | `sign` | routes | mail from a trusted source with a remote route carries its DKIM signatures (`env.dkim`, made once and kept for retries), or its remote recipients are deferred with the reason |
//! | `deliver` | routes | each routed recipient `Sent`, `Deferred` or `Failed` by its transport; deliveries recorded before each remote hop (`checkpoint`) |
//! | `expire` | states of this attempt | what is still deferred past `max_queue_lifetime` failed (RFC 5321 §4.5.4.1) |
//! | `notices` | final states | a bounce for what failed in this attempt, a delay warning when due, both queued |
//! | `finish` | all of the above | the message gone from the queue, or recorded and requeued with its next attempt |
//!
//! Where the next features go: address rewriting before `route`; LMTP
//! and pipe beside `local` (see `transport`).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};

use super::expand::Refused;
use super::{backoff, is_local, lock, log_outcome, Deliverer, Event};
use crate::address::{ForwardPath, ReversePath};
use crate::bounce::{self, Action, Notice, Report};
use crate::config::transport::NextHop;
use crate::config::Config;
use crate::envelope::{Envelope, RcptState, Recipient, Via};
use crate::policy::LocalPolicy;
use crate::smtp::reply::Enhanced;
use crate::spool::{Content, ReadError};
use crate::status::Status;
use crate::time::unix_now;
use crate::transport::lmtp::{Lmtp, LmtpTarget};
use crate::transport::local::{mailbox_user, Local};
use crate::transport::pipe::{Pipe, Run};
use crate::transport::smtp::{Relayhost, Smtp};
use crate::transport::{Batch, Transport};

/// One claimed message on its way through the stages.
struct Attempt {
    id: String,
    env: Envelope,
    content: Content,
    now: u64,
    /// Failures already reported by an earlier attempt.
    failed_before: Vec<ForwardPath>,
    /// The recipients' states as the queue file has them.
    recorded: Vec<RcptState>,
    /// The remote host that answered, per recipient (for DSNs).
    remote_mta: HashMap<usize, String>,
    /// Some remote recipients waited for a concurrency slot, untried.
    postponed: bool,
    /// Recipients whose expansion was deferred (a broken `.forward`): not
    /// delivered anywhere in this attempt.
    held: Vec<ForwardPath>,
    /// Success notices owed (RFC 3461 NOTIFY=SUCCESS): recipients sent in
    /// this attempt and what they are told, and aliases expanded to several
    /// targets.
    successes: Vec<(usize, Action)>,
    expanded: Vec<Report>,
}

/// Where a group of recipients goes.
enum Route {
    /// Mailboxes here.
    Local(Vec<usize>),
    /// SMTP to a domain's MX hosts (or the relayhost, or the hosts `via`
    /// that the transport table names): one transaction.
    Smtp {
        domain: String,
        via: Vec<Relayhost>,
        rcpts: Vec<usize>,
    },
    /// Decided by the transport table without delivery (`error:`,
    /// `defer:`).
    Settled(Vec<(usize, RcptState)>),
    /// LMTP to a delivery agent: one transaction.
    Lmtp(LmtpTarget, Vec<usize>),
    /// Commands: `|command` targets, or `mailbox_command` for mailboxes.
    Pipe(Vec<usize>),
    /// `/path/file` targets.
    File(Vec<usize>),
}

/// One recipient's next hop, as routing decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// This host's mailboxes.
    Local,
    /// SMTP for this domain, through these hosts (none: its MX hosts).
    Smtp(String, Vec<Relayhost>),
    /// Decided without delivery (`error:`, `defer:`).
    Settled(RcptState),
    /// LMTP to this delivery agent (the table, or `mailbox_transport`).
    Lmtp(LmtpTarget),
    /// `mailbox_command`.
    Command,
}

/// Recipients per SMTP transaction (RFC 5321 §4.5.3.1.8: a server must
/// take at least 100).
const RCPTS_PER_TRANSACTION: usize = 100;

/// Works one claimed message. Returns the next attempt time, or `None`
/// when the message is gone from the queue.
pub fn deliver_message(d: &Deliverer, id: &str) -> Option<u64> {
    let mut a = match claim_and_triage(d, id) {
        Ok(a) => a,
        Err(next) => return next,
    };
    if let Err(next) = expand(d, &mut a) {
        return next;
    }
    let routes = route(d, &a.env, &a.held);
    for route in sign(d, &mut a, routes) {
        deliver(d, &mut a, route);
    }
    expire(d, &mut a);
    notices(d, &mut a);
    finish(d, a)
}

/// Reads the claimed message; a damaged file (or one under another
/// message's name) goes to `corrupt/`, an unreadable one back to the queue.
fn claim_and_triage(d: &Deliverer, id: &str) -> Result<Attempt, Option<u64>> {
    let (env, content) = match d.spool.read_claimed(id) {
        // A file under another message's name (a recycled file a crash
        // left behind) is damaged, not that message.
        Ok(q) if q.env.id != id => {
            log::warn!(
                "warning: {id}: the queue file holds message {}; moved to corrupt/",
                q.env.id
            );
            let _ = d.spool.quarantine(id);
            return Err(None);
        }
        Ok(q) => (q.env, q.content),
        Err(ReadError::Damaged(e)) => {
            log::warn!("warning: {id}: damaged queue file ({e}); moved to corrupt/");
            let _ = d.spool.quarantine(id);
            return Err(None);
        }
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            log::warn!("warning: {id}: queue file gone: {e}");
            return Err(None);
        }
        Err(ReadError::Io(e)) => {
            // Out of file descriptors, an I/O error: back to the queue for
            // a later attempt, not left in active/ until a restart.
            log::warn!("warning: {id}: cannot read queue file: {e}; tried again later");
            return Err(requeue(d, id, unix_now() + d.cfg.min_backoff.as_secs()));
        }
    };
    Ok(Attempt {
        id: id.to_string(),
        failed_before: env
            .rcpts
            .iter()
            .filter(|r| matches!(r.state, RcptState::Failed(_)))
            .map(|r| r.addr.clone())
            .collect(),
        recorded: env.rcpts.iter().map(|r| r.state.clone()).collect(),
        env,
        content,
        now: unix_now(),
        remote_mta: HashMap::new(),
        postponed: false,
        held: Vec::new(),
        successes: Vec::new(),
        expanded: Vec::new(),
    })
}

/// Alias expansion, recorded at once. An alias that failed (a loop) is
/// written as still to do: it is written as failed with its bounce, at
/// the end of the attempt, so a crash before that expands it, fails it
/// and reports it again.
fn expand(d: &Deliverer, a: &mut Attempt) -> Result<(), Option<u64>> {
    if !expand_aliases(d, &mut a.env, &mut a.held, &mut a.expanded) {
        return Ok(());
    }
    let mut snap = a.env.clone();
    for r in snap.rcpts.iter_mut() {
        if matches!(r.state, RcptState::Failed(_)) && !a.failed_before.contains(&r.addr) {
            r.state = RcptState::Pending;
        }
    }
    match d.spool.record(&a.id, &snap, &a.content) {
        Ok(c) => a.content = c,
        Err(e) => {
            log::warn!("warning: {}: cannot record alias expansion: {e}", a.id);
            return Err(requeue(d, &a.id, a.now + d.cfg.min_backoff.as_secs()));
        }
    }
    a.recorded = snap.rcpts.into_iter().map(|r| r.state).collect();
    Ok(())
}

/// Replaces every open recipient that is a virtual alias, or an alias of
/// a local domain, by what it stands for (marked `expanded`, so it is
/// never expanded again). True if changed. An alias of several targets
/// that asked for success notices gets an `expanded` one (in `notices`).
fn expand_aliases(
    d: &Deliverer,
    env: &mut Envelope,
    held: &mut Vec<ForwardPath>,
    notices: &mut Vec<Report>,
) -> bool {
    let mut changed = false;
    let mut out: Vec<Recipient> = Vec::with_capacity(env.rcpts.len());
    for r in std::mem::take(&mut env.rcpts) {
        let expansion = match r.expanded || !r.state.is_open() {
            true => None,
            false => super::expand::targets_of(&d.cfg, &d.policy, &r.addr),
        };
        let Some(expansion) = expansion else {
            out.push(r);
            continue;
        };
        changed = true;
        match expansion {
            Ok(targets) => {
                let dsn = inherited(&r, targets.len());
                if r.dsn.notify.success() && targets.len() > 1 {
                    let ok = Status::bare(Enhanced(2, 0, 0), "alias expanded");
                    let mut report = report(&r, None, Action::Expanded);
                    report.status = ok;
                    notices.push(report);
                }
                for t in targets {
                    if !out
                        .iter()
                        .any(|o| o.addr == t.addr && o.via == t.via && o.expanded)
                    {
                        let state = allowed(&d.cfg, &t.via);
                        if !state.is_open() {
                            log_outcome(env, &t.addr, "none", &state, unix_now());
                        }
                        out.push(Recipient {
                            state,
                            addr: t.addr,
                            expanded: true,
                            via: t.via,
                            dsn: dsn.clone(),
                        });
                    }
                }
                log::info!("{}: alias {} expanded", env.id, r.addr.bare());
            }
            Err(Refused::Fail(why)) => out.push(Recipient {
                state: RcptState::Failed(Status::new(554, Enhanced(5, 4, 6), why)),
                ..r
            }),
            Err(Refused::Defer(why)) => {
                // Not delivered anywhere in this attempt (not to the
                // mailbox either): tried again later.
                log::warn!("warning: {}: {why}; deferred", env.id);
                let state = RcptState::Deferred(Status::new(451, Enhanced(4, 3, 5), why));
                log_outcome(env, &r.addr, "none", &state, unix_now());
                held.push(r.addr.clone());
                out.push(Recipient { state, ..r });
            }
        }
    }
    env.rcpts = out;
    changed
}

/// What the targets of alias `r` (`n` of them) are asked for: its NOTIFY
/// (without SUCCESS for a list, RFC 3461 §6.2.7.3: the list's
/// `expanded` notice answers it), and its ORCPT, else its own address.
fn inherited(r: &Recipient, n: usize) -> crate::dsn::RcptDsn {
    crate::dsn::RcptDsn {
        notify: match n > 1 && r.dsn.notify.success() {
            true => r.dsn.notify.without_success(),
            false => r.dsn.notify,
        },
        orcpt: Some(
            r.dsn
                .orcpt
                .clone()
                .unwrap_or_else(|| crate::dsn::orcpt_for(&r.addr.bare())),
        ),
    }
}

/// Pending, or failed for a command or file that aliases may not name
/// (`allow_mail_to_commands`, `allow_mail_to_files`).
fn allowed(cfg: &Config, via: &Option<Via>) -> RcptState {
    let Some(via) = via else {
        return RcptState::Pending;
    };
    let (list, what, setting) = match via.is_command() {
        true => (
            &cfg.allow_mail_to_commands,
            "a command",
            "allow_mail_to_commands",
        ),
        false => (&cfg.allow_mail_to_files, "a file", "allow_mail_to_files"),
    };
    let (place, key) = match via.from_forward() {
        true => ("~/.forward", "forward"),
        false => ("aliases", "alias"),
    };
    if list.iter().any(|k| k == key) {
        return RcptState::Pending;
    }
    RcptState::Failed(Status::new(
        550,
        Enhanced(5, 7, 1),
        format!("mail to {what} is not allowed in {place} ({setting})"),
    ))
}

/// Routing: what the transport table says, else local domains here and
/// other domains to their MX hosts (or the relayhost). Settled ones
/// first, then local recipients (no network, quick), then one SMTP
/// transaction per domain and next hop of at most `RCPTS_PER_TRANSACTION`
/// recipients.
fn route(d: &Deliverer, env: &Envelope, held: &[ForwardPath]) -> Vec<Route> {
    let (mut local, mut settled) = (Vec::new(), Vec::new());
    let mut remote: Vec<(String, Vec<Relayhost>, Vec<usize>)> = Vec::new();
    let mut lmtp: Vec<(LmtpTarget, Vec<usize>)> = Vec::new();
    let (mut pipes, mut files) = (Vec::new(), Vec::new());
    for (i, r) in env.rcpts.iter().enumerate() {
        if !r.state.is_open() || (!r.expanded && held.contains(&r.addr)) {
            continue;
        }
        match &r.via {
            Some(via) if via.is_command() => pipes.push(i),
            Some(_) => files.push(i),
            None => {}
        }
        if r.via.is_some() {
            continue;
        }
        match next_hop(&d.policy, &r.addr) {
            Hop::Command => pipes.push(i),
            Hop::Local => local.push(i),
            Hop::Settled(state) => settled.push((i, state)),
            Hop::Lmtp(target) => match lmtp
                .iter_mut()
                .find(|(t, v)| *t == target && v.len() < RCPTS_PER_TRANSACTION)
            {
                Some((_, v)) => v.push(i),
                None => lmtp.push((target, vec![i])),
            },
            Hop::Smtp(domain, via) => {
                match remote
                    .iter_mut()
                    .find(|(dn, v, _)| *dn == domain && *v == via)
                {
                    Some((_, _, v)) if v.len() < RCPTS_PER_TRANSACTION => v.push(i),
                    _ => remote.push((domain, via, vec![i])),
                }
            }
        }
    }
    let mut routes = Vec::with_capacity(remote.len() + 2);
    if !settled.is_empty() {
        routes.push(Route::Settled(settled));
    }
    if !local.is_empty() {
        routes.push(Route::Local(local));
    }
    routes.extend(lmtp.into_iter().map(|(t, rcpts)| Route::Lmtp(t, rcpts)));
    if !pipes.is_empty() {
        routes.push(Route::Pipe(pipes));
    }
    if !files.is_empty() {
        routes.push(Route::File(files));
    }
    routes.extend(remote.into_iter().map(|(domain, via, rcpts)| Route::Smtp {
        domain,
        via,
        rcpts,
    }));
    routes
}

/// DKIM (RFC 6376): before the first remote delivery of mail this host
/// may vouch for, the signatures of its `From:` domain, made once and kept
/// in the envelope (written down by the checkpoint before the network), so
/// that every retry sends the same ones. A signature that cannot be made
/// defers the remote recipients, with a log line: never sent unsigned in
/// silence.
#[cfg(feature = "tls")]
fn sign(d: &Deliverer, a: &mut Attempt, routes: Vec<Route>) -> Vec<Route> {
    let Some(signer) = d.policy.dkim.as_deref() else {
        return routes;
    };
    let remote = routes.iter().any(|r| matches!(r, Route::Smtp { .. }));
    if !remote || !a.env.dkim.is_empty() || !vouched_for(&d.cfg, &a.env) {
        return routes;
    }
    let made = a
        .content
        .open()
        .map_err(|e| format!("cannot read the queued message: {e}"))
        .and_then(|mut r| signer.sign(&mut r, a.now));
    let why = match made {
        Ok(sig) => {
            a.env.dkim = sig.unwrap_or_default();
            return routes;
        }
        Err(why) => why,
    };
    log::warn!(
        "warning: {}: DKIM signing failed: {why}; remote delivery deferred",
        a.env.id
    );
    let deferred = || {
        RcptState::Deferred(Status::new(
            451,
            Enhanced(4, 7, 0),
            format!("DKIM signing failed: {why}"),
        ))
    };
    routes
        .into_iter()
        .map(|r| match r {
            Route::Smtp { rcpts, .. } => {
                Route::Settled(rcpts.into_iter().map(|i| (i, deferred())).collect())
            }
            other => other,
        })
        .collect()
}

#[cfg(not(feature = "tls"))]
fn sign(_: &Deliverer, _: &mut Attempt, routes: Vec<Route>) -> Vec<Route> {
    routes
}

/// Mail this host signs for: its own (local submission, bounces), from
/// authenticated clients (RFC 4954: `ESMTPA`, `ESMTPSA`, ...) and from
/// `relay_networks`. Relayed mail from anyone else never is.
#[cfg(feature = "tls")]
fn vouched_for(cfg: &Config, env: &Envelope) -> bool {
    env.protocol == "local"
        || env.client == "localhost"
        || env.protocol.ends_with('A')
        || env
            .client
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| cfg.may_relay(ip))
}

/// The transport table's entry for a recipient, else the default: local
/// domains (and `<postmaster>`) here, other domains by SMTP.
pub fn next_hop(policy: &LocalPolicy, addr: &ForwardPath) -> Hop {
    let ForwardPath::Mailbox(m) = addr else {
        return local_hop(policy);
    };
    let domain = m.domain.to_lowercase();
    match policy.transports.lookup(m) {
        Some(NextHop::Local) => local_hop(policy),
        Some(NextHop::Lmtp(target)) => Hop::Lmtp(target.clone()),
        Some(NextHop::Smtp(hosts)) => Hop::Smtp(domain, hosts.clone()),
        Some(NextHop::Error(s)) => Hop::Settled(RcptState::Failed(s.clone())),
        Some(NextHop::Defer(s)) => Hop::Settled(RcptState::Deferred(s.clone())),
        None if policy.is_local_domain(&m.domain) => local_hop(policy),
        None => Hop::Smtp(domain, Vec::new()),
    }
}

/// Final delivery here: the mailboxes, or `mailbox_transport`.
fn local_hop(policy: &LocalPolicy) -> Hop {
    match (&policy.mailbox_transport, policy.mailbox_command) {
        (Some(t), _) => Hop::Lmtp(t.clone()),
        (None, true) => Hop::Command,
        (None, false) => Hop::Local,
    }
}

/// Hands one route to its transport and takes the states it returns.
fn deliver(d: &Deliverer, a: &mut Attempt, route: Route) {
    match route {
        Route::Local(rcpts) => deliver_here(d, a, &rcpts),
        Route::Lmtp(target, rcpts) => {
            // As before SMTP: what was delivered so far is written down.
            checkpoint(d, a);
            let transport = Lmtp {
                target: &target,
                hostname: &d.cfg.hostname,
                connect_timeout: d.cfg.connect_timeout,
                command_timeout: d.cfg.relay_timeout,
            };
            run(a, &transport, &rcpts, "");
        }
        Route::Pipe(rcpts) => commands(d, a, &rcpts, super::pipe_plan::plan, "pipe"),
        Route::File(rcpts) => commands(d, a, &rcpts, super::pipe_plan::file, "file"),
        Route::Settled(states) => {
            for (i, state) in states {
                log_outcome(&a.env, &a.env.rcpts[i].addr, "none", &state, a.now);
                a.env.rcpts[i].state = state;
            }
        }
        Route::Smtp { domain, via, rcpts } => {
            let (via, via_relayhost) = relay_hosts(&d.cfg, &d.policy, &a.env.from, via);
            // Before the network, and between domains: what was delivered
            // so far is written down, so that a crash or a stop does not
            // deliver it again.
            checkpoint(d, a);
            if !take_slot(d, &domain) {
                a.postponed = true;
                return;
            }
            let transport = Smtp {
                cfg: d.relay_config_for(&domain, via.is_empty()),
                dns: d.resolver.as_ref(),
                via: &via,
                credentials: &d.relay_auth,
                via_relayhost,
                failure_limit: d.cfg.relayhost_failure_limit,
            };
            run(a, &transport, &rcpts, &domain);
            if let Some(n) = lock(&d.domains).get_mut(&domain) {
                *n -= 1;
            }
            for (host, why) in crate::transport::breaker::take_news() {
                breaker_notice(d, &host, &why);
            }
        }
    }
}

/// Mailboxes under mail_dir.
fn deliver_here(d: &Deliverer, a: &mut Attempt, rcpts: &[usize]) {
    let known = |user: &str| d.policy.is_user(user);
    let delimiter = d.policy.delimiter.as_str();
    let transport = Local {
        mail_dir: &d.cfg.mail_dir,
        format: d.cfg.mailbox_format,
        hostname: &d.cfg.hostname,
        known: &known,
        delimiter,
        delivered_before: a
            .env
            .rcpts
            .iter()
            .filter(|r| matches!(r.state, RcptState::Sent(_)) && is_local(d, &r.addr))
            .map(|r| mailbox_user(&r.addr, delimiter, &known))
            .collect::<HashSet<String>>(),
    };
    run(a, &transport, rcpts, "");
}

/// What to run for a recipient, or why nothing.
type Plan = fn(&Config, &LocalPolicy, &Envelope, usize) -> Result<Run, RcptState>;

/// Commands (and file targets), as `plan` says.
fn commands(d: &Deliverer, a: &mut Attempt, rcpts: &[usize], plan: Plan, relay: &'static str) {
    let env = a.env.clone();
    let plan = |i: usize| plan(&d.cfg, &d.policy, &env, i);
    let transport = Pipe {
        plan: &plan,
        time_limit: d.cfg.command_time_limit,
        relay,
    };
    run(a, &transport, rcpts, "");
}

/// One notice to postmaster when a relay host's circuit breaker opens.
fn breaker_notice(d: &Deliverer, host: &str, why: &str) {
    let now = unix_now();
    let text = format!(
        "From: MAILER-DAEMON@{me} (Mail Delivery System)\r\n\
         To: postmaster\r\n\
         Subject: relay host {host} refuses our mail; sending to it is paused\r\n\
         Date: {date}\r\n\
         Auto-Submitted: auto-generated\r\n\
         \r\n\
         The relay host {host} refused this host's credentials or mail\r\n\
         {limit} times in a row. The last answer was:\r\n\
         \r\n    {why}\r\n\r\n\
         Nothing more is sent to it and no mail is bounced: everything for it\r\n\
         waits in the queue. Once the cause is fixed (the credentials in\r\n\
         relayhost_auth_file, the sender addresses it accepts), run\r\n\
         `satchel queue flush` or reload satchel, and the mail goes.\r\n",
        me = d.cfg.hostname,
        date = crate::time::rfc5322(now),
        limit = d.cfg.relayhost_failure_limit,
        why = why.replace(['\r', '\n'], " "),
    );
    let mut env = Envelope::local(
        ReversePath::Null,
        vec![ForwardPath::Postmaster],
        &d.cfg.hostname,
        now,
        text.as_bytes(),
    );
    match d.spool.queue_bytes(text.as_bytes(), &mut env) {
        Ok(id) => {
            log::info!("relay host {host}: notice to postmaster: {id}");
            d.wake.send(Event::Queued(id));
        }
        Err(e) => {
            log::warn!("warning: relay host {host}: cannot queue the notice to postmaster: {e}")
        }
    }
}

/// The hosts an SMTP route goes through: the transport table's, else
/// the sender's relay (`sender_relay_file`), else the relayhost list
/// (`true`: its one-line credentials apply), else none (the MX hosts).
pub fn relay_hosts(
    cfg: &Config,
    policy: &LocalPolicy,
    from: &ReversePath,
    table: Vec<Relayhost>,
) -> (Vec<Relayhost>, bool) {
    if !table.is_empty() {
        return (table, false);
    }
    let sender = match from {
        ReversePath::Mailbox(m) => policy.sender_relays.lookup(m),
        ReversePath::Null => None,
    };
    match sender {
        Some(hosts) => (hosts.to_vec(), false),
        None => (cfg.relayhost.clone(), !cfg.relayhost.is_empty()),
    }
}

/// Where a recipient would go now, named without a DNS look-up (for
/// `queue list`): `local`, `error`, `defer`, the hosts of its route
/// (`[a]:587, smtps:[b]:465`), or `MX of example.org`.
pub fn route_name(
    cfg: &Config,
    policy: &LocalPolicy,
    from: &ReversePath,
    addr: &ForwardPath,
) -> String {
    match next_hop(policy, addr) {
        Hop::Local => "local".into(),
        Hop::Lmtp(target) => target.to_string(),
        Hop::Command => "mailbox_command".into(),
        Hop::Settled(state) if state.is_open() => "defer".into(),
        Hop::Settled(_) => "error".into(),
        Hop::Smtp(domain, table) => {
            let (via, _) = relay_hosts(cfg, policy, from, table);
            if via.is_empty() {
                return format!("MX of {domain}");
            }
            let hosts: Vec<String> = via.iter().map(ToString::to_string).collect();
            hosts.join(", ")
        }
    }
}

/// A connection slot for `domain` (`destination_concurrency_limit`).
fn take_slot(d: &Deliverer, domain: &str) -> bool {
    let mut load = lock(&d.domains);
    let n = load.entry(domain.to_string()).or_insert(0);
    if *n >= d.cfg.destination_concurrency_limit {
        return false;
    }
    *n += 1;
    true
}

fn run(a: &mut Attempt, t: &dyn Transport, rcpts: &[usize], next_hop: &str) {
    let result = t.deliver(&Batch {
        env: &a.env,
        content: &a.content,
        rcpts,
        next_hop,
    });
    for (&i, state) in rcpts.iter().zip(result.states) {
        if let Some(mta) = &result.remote_mta {
            a.remote_mta.insert(i, mta.clone());
        }
        if let (Some(act), RcptState::Sent(_)) = (result.success_notice, &state) {
            if a.env.rcpts[i].dsn.notify.success() {
                a.successes.push((i, act));
            }
        }
        log_outcome(&a.env, &a.env.rcpts[i].addr, &result.relay, &state, a.now);
        a.env.rcpts[i].state = state;
    }
}

/// RFC 5321 §4.5.4.1: give up on what is still deferred after the lifetime.
fn expire(d: &Deliverer, a: &mut Attempt) {
    if a.now.saturating_sub(a.env.created) < d.cfg.max_queue_lifetime.as_secs() {
        return;
    }
    for r in a.env.rcpts.iter_mut() {
        if let RcptState::Deferred(why) = &r.state {
            r.state = RcptState::Failed(Status::bare(
                Enhanced(4, 4, 7),
                format!("delivery time expired; last error: {why}"),
            ));
        }
    }
}

/// A bounce for what failed in this attempt; a delay warning once
/// (Postfix's delay_warning_time); the success notices asked for. Each
/// only for recipients whose NOTIFY wants it (RFC 3461 §4.1).
fn notices(d: &Deliverer, a: &mut Attempt) {
    failure_notice(d, a);
    let env = &mut a.env;
    let dwt = d.cfg.delay_warning_time.as_secs();
    if dwt > 0 && !env.warned && a.now.saturating_sub(env.created) >= dwt {
        let deferred: Vec<usize> = (0..env.rcpts.len())
            .filter(|&i| matches!(env.rcpts[i].state, RcptState::Deferred(_)))
            .collect();
        let wanted: Vec<Report> = (deferred.iter())
            .filter(|&&i| env.rcpts[i].dsn.notify.delay())
            .map(|&i| report(&env.rcpts[i], a.remote_mta.get(&i), Action::Delayed))
            .collect();
        let sent =
            |w: &[Report]| w.is_empty() || notify(d, env, Action::Delayed, w, &a.content).is_ok();
        if !deferred.is_empty() && sent(&wanted) {
            env.warned = true;
        }
    }
    let mut done: Vec<Report> = std::mem::take(&mut a.expanded);
    for &(i, act) in &a.successes {
        done.push(report(&a.env.rcpts[i], a.remote_mta.get(&i), act));
    }
    if !done.is_empty() {
        if let Err(e) = notify(d, &a.env, Action::Delivered, &done, &a.content) {
            log::warn!("warning: {}: cannot queue the success notice: {e}", a.id);
        }
    }
}

/// The bounce for recipients that failed in this attempt; if it cannot
/// be queued they stay open, to be tried (and reported) again.
fn failure_notice(d: &Deliverer, a: &mut Attempt) {
    let env = &mut a.env;
    let newly_failed: Vec<usize> = (0..env.rcpts.len())
        .filter(|&i| {
            matches!(env.rcpts[i].state, RcptState::Failed(_))
                && !a.failed_before.contains(&env.rcpts[i].addr)
        })
        .collect();
    let (owed, unwanted): (Vec<usize>, Vec<usize>) = newly_failed
        .into_iter()
        .partition(|&i| env.rcpts[i].dsn.notify.failure());
    for i in unwanted {
        log::info!(
            "{}: to=<{}>: no non-delivery notice (NOTIFY={})",
            env.id,
            env.rcpts[i].addr.bare(),
            env.rcpts[i].dsn.notify.value().unwrap_or_default()
        );
    }
    if owed.is_empty() {
        return;
    }
    let reports: Vec<Report> = owed
        .iter()
        .map(|&i| report(&env.rcpts[i], a.remote_mta.get(&i), Action::Failed))
        .collect();
    if let Err(e) = notify(d, env, Action::Failed, &reports, &a.content) {
        log::warn!(
            "warning: {}: cannot queue the bounce: {e}; will retry",
            a.id
        );
        for &i in &owed {
            if let RcptState::Failed(t) = &env.rcpts[i].state {
                env.rcpts[i].state = RcptState::Deferred(t.clone());
            }
        }
    }
}

/// The message leaves the queue, or is recorded and requeued.
fn finish(d: &Deliverer, mut a: Attempt) -> Option<u64> {
    let id = a.id.as_str();
    if a.env.is_done() {
        if let Err(e) = d.spool.finish(id, &a.content) {
            log::warn!("warning: {id}: cannot remove queue file: {e}");
        }
        log::info!("{id}: removed");
        return None;
    }
    let waiting_for_a_slot_only = a.postponed
        && a.env
            .rcpts
            .iter()
            .all(|r| !matches!(r.state, RcptState::Deferred(_)));
    let next = if waiting_for_a_slot_only {
        a.now + 1 // not an attempt
    } else if offline_only(&a.env) {
        // No route to anywhere (the link is down): not the message's
        // fault, so not an attempt; tried again soon, to go out within
        // seconds of the link coming back.
        log::info!(
            "{id}: network unreachable; tried again in {}s, not counted as an attempt",
            LINK_RETRY
        );
        a.now + LINK_RETRY
    } else {
        a.env.attempts += 1;
        a.now + backoff(&d.cfg, a.env.attempts)
    };
    a.env.next_attempt = next;
    if let Err(e) = d.spool.record(id, &a.env, &a.content) {
        log::warn!("warning: {id}: cannot update queue file: {e}");
    }
    requeue(d, id, next)
}

/// How soon a message that found no route at all is tried again.
const LINK_RETRY: u64 = 15;

/// Every recipient still waiting was deferred because this host has no
/// route to the next hop (ENETUNREACH: no default route, the link down).
fn offline_only(env: &Envelope) -> bool {
    let mut waiting = env.rcpts.iter().filter_map(|r| match &r.state {
        RcptState::Deferred(s) => Some(s),
        _ => None,
    });
    let first = waiting.next();
    first.is_some_and(crate::transport::smtp::unreachable)
        && waiting.all(crate::transport::smtp::unreachable)
}

/// Writes down the recipients delivered since `recorded` (the states in
/// the queue file), when there are any. Only deliveries: a failure is
/// written with its bounce at the end of the attempt, so one that a crash
/// cuts off is tried, and reported, again.
fn checkpoint(d: &Deliverer, a: &mut Attempt) {
    let sent = |s: &RcptState| matches!(s, RcptState::Sent(_));
    if !a
        .env
        .rcpts
        .iter()
        .zip(a.recorded.iter())
        .any(|(r, old)| sent(&r.state) && !sent(old))
    {
        return;
    }
    let mut snap = a.env.clone();
    for (r, old) in snap.rcpts.iter_mut().zip(a.recorded.iter()) {
        if matches!(r.state, RcptState::Failed(_)) && !a.failed_before.contains(&r.addr) {
            r.state = old.clone();
        }
    }
    match d.spool.record(&a.id, &snap, &a.content) {
        Ok(c) => {
            a.content = c;
            a.recorded = snap.rcpts.into_iter().map(|r| r.state).collect();
        }
        Err(e) => log::warn!(
            "warning: {}: cannot record the deliveries so far: {e}",
            a.id
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

/// Queues a bounce, delay warning or success notice to the
/// reverse-path. A message from `<>` gets none (RFC 5321 §4.5.5: a
/// bounce is never bounced); like Postfix's default, such double bounces
/// are logged and dropped.
fn notify(
    d: &Deliverer,
    env: &Envelope,
    action: Action,
    reports: &[Report],
    msg: &Content,
) -> io::Result<()> {
    let ReversePath::Mailbox(sender) = &env.from else {
        log::info!("{}: undeliverable mail from <> (a bounce): not returned; discarded as Postfix does with double bounces", env.id);
        return Ok(());
    };
    // RFC 3461 §4.3: the whole message only to a sender who asked, for a
    // failure, and within bounce_size_limit; else its header section.
    // RFC 8689 §5: a REQUIRETLS message's content stays in TLS; its
    // notice returns the header section, and is REQUIRETLS mail itself.
    let full = action == Action::Failed
        && env.ret == Some(crate::dsn::Ret::Full)
        && !env.requiretls
        && msg.len <= d.cfg.bounce_size_limit;
    let limit = if full { msg.len } else { 64 * 1024 };
    let mut original = Vec::new();
    msg.open()?.take(limit).read_to_end(&mut original)?;
    let now = unix_now();
    let to = sender.to_string();
    let envid = env
        .envid
        .as_deref()
        .map(|e| crate::dsn::decode_xtext(e).unwrap_or_else(|| e.to_string()));
    let bytes = bounce::build(&Notice {
        action,
        hostname: &d.cfg.hostname,
        queue_id: &env.id,
        to: &to,
        arrival: env.created,
        now,
        reports,
        original: &original,
        full,
        envid: envid.as_deref(),
    });
    let mut benv = Envelope::local(
        ReversePath::Null,
        vec![ForwardPath::Mailbox(sender.clone())],
        &d.cfg.hostname,
        now,
        &bytes,
    );
    benv.smtputf8 |= env.smtputf8;
    benv.requiretls = env.requiretls;
    let bid = d.spool.queue_bytes(&bytes, &mut benv)?;
    let kind = match action {
        Action::Failed => "non-delivery",
        Action::Delayed => "delay",
        _ => "delivery status",
    };
    log::info!("{}: sender {kind} notification: {bid}", env.id);
    d.wake.send(Event::Queued(bid));
    Ok(())
}

/// One recipient's block of a DSN.
fn report(r: &Recipient, mta: Option<&String>, action: Action) -> Report {
    Report {
        recipient: r.addr.bare(),
        status: r
            .state
            .status()
            .cloned()
            .unwrap_or_else(|| Status::bare(Enhanced(4, 0, 0), "not tried yet")),
        remote_mta: mta.cloned(),
        action,
        original: r.dsn.orcpt.as_deref().map(crate::dsn::orcpt_field),
    }
}
