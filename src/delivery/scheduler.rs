//! The scheduler: due times in memory, scans of `queue/`, wake-ups, and
//! claims; `run_once` for a queue run without a daemon. It decides when a
//! message is tried, never how (that is `attempt`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{control, deliver_message, lock, Control, Deliverer, Event};
use crate::handoff::Handoff;
use crate::spool::{is_queue_id, Spool};
use crate::time::unix_now;

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

pub(super) fn scheduler(d: &Deliverer, jobs: &Handoff<String>) {
    let mut s = Schedule::default();
    let mut in_flight = HashSet::new();
    // Being delivered when a flush came: due again as soon as they are done.
    let mut flushed: HashSet<String> = HashSet::new();
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
        // Idle cached SMTP and LMTP sessions are closed after a few seconds; the
        // wake-up only happens while there are some.
        crate::transport::smtp::expire_cached();
        let lmtp_idle = crate::transport::lmtp::expire_idle();
        if crate::transport::smtp::cached_sessions() + lmtp_idle > 0 {
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
                let again = flushed.remove(&id);
                if let Some(t) = next {
                    s.set(id, if again { 0 } else { t });
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
                // An attempt under way may end in a deferral a moment
                // after: that message is tried again at once, too.
                flushed.extend(in_flight.iter().cloned());
                log::info!(
                    "flush: {} queued message(s) due now",
                    ids.len() + in_flight.len()
                );
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
            let _ = control::control_request(spool.root(), "scan");
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

#[cfg(test)]
mod tests {
    use super::*;

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
