//! `metrics_file`: counters in the Prometheus text format (the format
//! node_exporter's textfile collector reads), rewritten atomically every
//! `metrics_interval` by the daemon: messages received, recipients
//! delivered, deferred and bounced, SMTP replies refused by status,
//! connection failures per transport, and the queue's length and the age
//! of its oldest message. Counters count since the daemon started.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::envelope::RcptState;
use crate::smtp::reply::Reply;
use crate::spool::Spool;

static RECEIVED: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static DEFERRED: AtomicU64 = AtomicU64::new(0);
static BOUNCED: AtomicU64 = AtomicU64::new(0);
/// (reply code, enhanced status) -> count.
static REJECTED: Mutex<BTreeMap<(u16, String), u64>> = Mutex::new(BTreeMap::new());
/// transport -> count.
static CONNECT_FAILURES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert(0) += 1;
}

/// A message queued from an SMTP client.
pub fn received() {
    RECEIVED.fetch_add(1, Ordering::Relaxed);
}

/// One recipient's result of a delivery attempt.
pub fn outcome(state: &RcptState) {
    let counter = match state {
        RcptState::Sent(_) => &DELIVERED,
        RcptState::Deferred(_) => &DEFERRED,
        RcptState::Failed(_) => &BOUNCED,
        RcptState::Pending => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A refusal sent to an SMTP client.
pub fn rejected(r: &Reply) {
    let status = r.enhanced.map_or_else(String::new, |e| e.to_string());
    bump(&REJECTED, (r.code, status));
}

/// A connection to a next hop that could not be made.
pub fn connect_failed(transport: &'static str) {
    bump(&CONNECT_FAILURES, transport);
}

/// The text format, with the queue's length and oldest age (seconds).
pub fn render(queued: usize, oldest_age: u64) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    };
    counter(
        "satchel_messages_received_total",
        "Messages queued from SMTP clients.",
        RECEIVED.load(Ordering::Relaxed),
    );
    counter(
        "satchel_recipients_delivered_total",
        "Recipients delivered.",
        DELIVERED.load(Ordering::Relaxed),
    );
    counter(
        "satchel_recipients_deferred_total",
        "Delivery attempts deferred, per recipient.",
        DEFERRED.load(Ordering::Relaxed),
    );
    counter(
        "satchel_recipients_bounced_total",
        "Recipients that failed for good.",
        BOUNCED.load(Ordering::Relaxed),
    );
    out.push_str(
        "# HELP satchel_smtp_rejected_total SMTP commands refused, by reply code and status.\n",
    );
    out.push_str("# TYPE satchel_smtp_rejected_total counter\n");
    for ((code, status), n) in REJECTED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!(
            "satchel_smtp_rejected_total{{code=\"{code}\",status=\"{status}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP satchel_connect_failures_total Connections to next hops that failed, by transport.\n");
    out.push_str("# TYPE satchel_connect_failures_total counter\n");
    for (transport, n) in CONNECT_FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        out.push_str(&format!(
            "satchel_connect_failures_total{{transport=\"{transport}\"}} {n}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP satchel_queue_messages Messages in the queue.\n# TYPE satchel_queue_messages gauge\nsatchel_queue_messages {queued}\n\
         # HELP satchel_queue_oldest_age_seconds Age of the oldest queued message.\n# TYPE satchel_queue_oldest_age_seconds gauge\nsatchel_queue_oldest_age_seconds {oldest_age}\n"
    ));
    out
}

/// Writes the file as one rename: a reader never sees half of it.
pub fn write(path: &Path, spool: &Spool) -> std::io::Result<()> {
    let ids = spool.list_ids()?;
    let now = crate::time::unix_now();
    let oldest = ids
        .first()
        .and_then(|(id, state)| spool.read_envelope(id, *state))
        .and_then(Result::ok)
        .map_or(0, |(_, e)| now.saturating_sub(e.created));
    let text = render(ids.len(), oldest);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The daemon's writer: now, then every `interval`.
pub fn spawn_writer(path: std::path::PathBuf, interval: std::time::Duration, spool: Spool) {
    let _ = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || loop {
            if let Err(e) = write(&path, &spool) {
                log::warn!("warning: metrics_file {}: {e}", path.display());
            }
            std::thread::sleep(interval);
        });
}
