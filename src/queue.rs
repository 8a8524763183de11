//! The queue tools an administrator uses, reading the spool directly (like
//! Postfix's mailq and postsuper): list (text or JSON), show, delete, hold,
//! release. Moving envelopes between `queue/` and `hold/` is a rename, so a
//! tool never races a delivery thread into a half state: a message being
//! delivered (`active/`) is refused with a clear message.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};

use crate::address::{ForwardPath, ReversePath};
use crate::envelope::{Envelope, RcptState};
use crate::spool::{is_queue_id, QueueState, ReadError, Spool};
use crate::time;

#[derive(Debug)]
pub enum QueueError {
    /// Not a queue ID at all (exit status 2).
    BadId(String),
    NotFound(String),
    /// In `active/`: being delivered right now.
    Busy(String),
    Io(String),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::BadId(id) => write!(f, "'{id}' is not a queue ID"),
            QueueError::NotFound(id) => write!(f, "{id}: no such message in the queue"),
            QueueError::Busy(id) => write!(
                f,
                "{id} is being delivered right now; try again in a moment"
            ),
            QueueError::Io(e) => f.write_str(e),
        }
    }
}

fn check_id(id: &str) -> Result<(), QueueError> {
    if is_queue_id(id) {
        Ok(())
    } else {
        Err(QueueError::BadId(id.chars().take(64).collect()))
    }
}

/// Where the envelope of `id` is now.
fn locate(spool: &Spool, id: &str) -> Result<QueueState, QueueError> {
    check_id(id)?;
    spool
        .locate(id)
        .ok_or_else(|| QueueError::NotFound(id.to_string()))
}

/// Where `id` is, when it is not being delivered right now.
fn at_rest(spool: &Spool, id: &str) -> Result<QueueState, QueueError> {
    match locate(spool, id)? {
        QueueState::Active => Err(QueueError::Busy(id.to_string())),
        st => Ok(st),
    }
}

fn io_error(id: &str) -> impl Fn(io::Error) -> QueueError + '_ {
    move |e| QueueError::Io(format!("{id}: {e}"))
}

/// Removes a waiting or held message.
pub fn delete(spool: &Spool, id: &str) -> Result<(), QueueError> {
    let st = at_rest(spool, id)?;
    spool.delete(id, st).map_err(io_error(id))
}

/// Deletes every message that is not being delivered; returns how many.
pub fn delete_all(spool: &Spool) -> Result<usize, QueueError> {
    let ids = spool
        .list_ids()
        .map_err(|e| QueueError::Io(e.to_string()))?;
    Ok(ids
        .into_iter()
        .filter(|(_, st)| *st != QueueState::Active)
        .filter(|(id, st)| spool.delete(id, *st).is_ok())
        .count())
}

/// Keeps a message from delivery until released; false when it was on
/// hold already.
pub fn hold(spool: &Spool, id: &str) -> Result<bool, QueueError> {
    at_rest(spool, id)?;
    spool.hold(id).map_err(io_error(id))
}

/// Returns a held message to the queue, due at once; false when it was
/// not on hold.
pub fn release(spool: &Spool, id: &str) -> Result<bool, QueueError> {
    at_rest(spool, id)?;
    spool.release(id).map_err(io_error(id))
}

/// How many messages a flush will try: those waiting in `queue/` (held
/// and active ones are not).
pub fn waiting(spool: &Spool) -> usize {
    spool.waiting().map(Iterator::count).unwrap_or(0)
}

/// The envelope and the message headers of `id`, for `queue show`.
pub fn show(spool: &Spool, id: &str) -> Result<String, QueueError> {
    // The message may move on while it is read: claimed for delivery (a
    // rename), rewritten after a deferral, or delivered and its file reused
    // for another message. A read counts only when the file read is still
    // one of its names afterwards; otherwise it is read again.
    for _ in 0..5 {
        let dir = locate(spool, id)?;
        let q = match spool.read_in(dir, id) {
            Ok(q) => q,
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(QueueError::Io(format!("{id}: {e}"))),
        };
        let mut msg = Vec::new();
        match q.open_content().and_then(|f| {
            f.take(crate::bounce::MAX_RETURNED_HEADERS as u64)
                .read_to_end(&mut msg)
        }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(QueueError::Io(format!("{id}: message: {e}"))),
        }
        if !spool.still_names(id, &q.file) {
            continue;
        }
        let headers = crate::bounce::header_section(&msg);
        return Ok(format!(
            "*** ENVELOPE ({}) ***\n{}*** HEADERS ***\n{}",
            dir.name(),
            q.text,
            String::from_utf8_lossy(headers).replace("\r\n", "\n")
        ));
    }
    Err(QueueError::Io(format!(
        "{id}: it kept changing while being read; try again"
    )))
}

fn state_word(s: &RcptState) -> &'static str {
    match s {
        RcptState::Pending => "pending",
        RcptState::Deferred(_) => "deferred",
        RcptState::Sent(_) => "sent",
        RcptState::Failed(_) => "failed",
    }
}

fn strip(a: &str) -> &str {
    a.trim_start_matches('<').trim_end_matches('>')
}

const LIST_HEADER: &str =
    "-Queue ID-------- --Size-- ----Arrival Time---- -Sender/Recipient-------\n";

/// Recipients line up under the sender, as in Postfix's mailq.
const RCPT_INDENT: &str = "                                                ";

/// One message of the mailq-style listing; adds it to the totals.
/// Written straight into `out` (no string per field): listing 100,000
/// messages is mostly this and reading the envelopes.
/// The last date formatted of each kind: neighbours in a queue mostly
/// arrived in the same second and wait for the same retry.
#[derive(Default)]
struct Dates {
    arrival: (u64, String),
    retry: (u64, String),
}

impl Dates {
    fn get(slot: &mut (u64, String), secs: u64, f: fn(u64) -> String) -> &str {
        if slot.1.is_empty() || slot.0 != secs {
            *slot = (secs, f(secs));
        }
        &slot.1
    }
}

/// Names the route a recipient of a message would take now (see
/// `delivery::route_name`); empty: not shown.
pub type Route<'a> = &'a (dyn Fn(&Envelope, &ForwardPath) -> String + Sync);

/// No routes shown.
pub fn no_route(_: &Envelope, _: &ForwardPath) -> String {
    String::new()
}

fn text_item(
    out: &mut String,
    item: &Result<(QueueState, Envelope), String>,
    route: Route,
    dates: &mut Dates,
    total: &mut u64,
    count: &mut usize,
) {
    use std::fmt::Write as _;
    let (state, e) = match item {
        Ok(x) => x,
        Err(msg) => {
            let _ = write!(out, "damaged envelope: {msg}\n\n");
            return;
        }
    };
    let mark = match state {
        QueueState::Active => "*",
        QueueState::Held => "!",
        QueueState::Queued | QueueState::Corrupt => " ",
    };
    let _ = write!(
        out,
        "{}{mark} {:>8} {:>20}  ",
        e.id,
        e.size,
        Dates::get(&mut dates.arrival, e.created, time::mailq),
    );
    // Paths without their angle brackets (`<>` shows as nothing).
    if let ReversePath::Mailbox(m) = &e.from {
        let _ = write!(out, "{m}");
    }
    out.push('\n');
    for r in &e.rcpts {
        let word = state_word(&r.state);
        out.push_str(RCPT_INDENT);
        match &r.addr {
            ForwardPath::Postmaster => out.push_str("postmaster"),
            ForwardPath::Mailbox(m) => {
                let _ = write!(out, "{m}");
            }
        }
        let _ = write!(out, " ({word}");
        if matches!(r.state, RcptState::Deferred(_)) && e.next_attempt > 0 {
            out.push_str(", next attempt ");
            out.push_str(Dates::get(&mut dates.retry, e.next_attempt, time::iso8601));
        }
        if r.state.is_open() {
            let via = route(e, &r.addr);
            if !via.is_empty() {
                let _ = write!(out, ", via {via}");
            }
        }
        out.push(')');
        // Written in place: a listing of 100,000 messages makes no string
        // per recipient.
        if let Some(why) = r.state.status() {
            let _ = write!(out, ": {why}");
        }
        out.push('\n');
    }
    out.push('\n');
    *total += e.size;
    *count += 1;
}

fn text_footer(total: u64, count: usize) -> String {
    format!(
        "-- {} Kbytes in {count} Request{}.\n",
        total.div_ceil(1024),
        if count == 1 { "" } else { "s" }
    )
}

/// A listing in the style of Postfix's mailq (`*` active, `!` held).
pub fn list_text(items: &[Result<(QueueState, Envelope), String>], route: Route) -> String {
    if items.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::from(LIST_HEADER);
    let (mut total, mut count) = (0u64, 0usize);
    let mut dates = Dates::default();
    for item in items {
        text_item(&mut out, item, route, &mut dates, &mut total, &mut count);
    }
    out.push_str(&text_footer(total, count));
    out
}

/// Writes the listing (text, or JSON lines) of the whole spool to `w`,
/// one envelope at a time: memory holds the sorted IDs, not the queue.
pub fn write_list<W: io::Write>(
    spool: &Spool,
    json: bool,
    route: Route,
    w: &mut W,
) -> io::Result<()> {
    let ids = spool.list_ids()?;
    if ids.is_empty() && !json {
        return w.write_all(b"Mail queue is empty\n");
    }
    if !json {
        w.write_all(LIST_HEADER.as_bytes())?;
    }
    let chunks: Vec<&[(String, QueueState)]> = ids.chunks(512).collect();
    let (mut total, mut count) = (0u64, 0usize);
    let mut result = Ok(());
    in_order(
        chunks.len(),
        |i| list_chunk(spool, chunks[i], json, route),
        |(buf, t, n)| {
            if result.is_ok() {
                // After a write error the rest is still taken in turn, so
                // that no worker waits for room forever; it is not written.
                result = w.write_all(buf.as_bytes());
            }
            total += t;
            count += n;
        },
    );
    result?;
    if !json {
        w.write_all(text_footer(total, count).as_bytes())?;
    }
    Ok(())
}

/// One chunk of the listing: its text, and the bytes and messages in it.
fn list_chunk(
    spool: &Spool,
    ids: &[(String, QueueState)],
    json: bool,
    route: Route,
) -> (String, u64, usize) {
    let (mut buf, mut total, mut count) = (String::new(), 0u64, 0usize);
    let mut dates = Dates::default();
    for (id, state) in ids {
        let Some(item) = spool.read_envelope(id, *state) else {
            continue;
        };
        if json {
            if let Ok((state, e)) = &item {
                buf.push_str(&json_item(*state, e, route));
            }
        } else {
            text_item(&mut buf, &item, route, &mut dates, &mut total, &mut count);
        }
    }
    (buf, total, count)
}

/// `work(0..n)` on worker threads, handed to `sink` in order. Reading
/// and formatting 100,000 envelopes is CPU work, and disk reads when the
/// cache is cold: workers take parts in turn, at most a bounded window
/// ahead of the one `sink` waits for. More readers than cores keep the
/// disk busy (cold: 7.6 s with 2 threads, 4.8 s with 8; warm: the same).
fn in_order<W>(n: usize, work: W, mut sink: impl FnMut((String, u64, usize)))
where
    W: Fn(usize) -> (String, u64, usize) + Sync,
{
    let threads = 8;
    let window = 4 * threads;
    let next = std::sync::atomic::AtomicUsize::new(0);
    // (parts handed to the sink so far, finished parts not yet handed)
    let order = Mutex::new((0usize, BTreeMap::new()));
    let ready = Condvar::new();
    let lock = || order.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut o = lock();
                while i >= o.0 + window {
                    o = ready.wait(o).unwrap_or_else(|p| p.into_inner());
                }
                drop(o);
                // A part is always delivered, or the sink would wait for
                // it forever.
                let part = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(i)))
                    .unwrap_or_else(|_| {
                        (
                            "(this part of the queue could not be listed)\n\n".into(),
                            0,
                            0,
                        )
                    });
                lock().1.insert(i, part);
                ready.notify_all();
            });
        }
        for i in 0..n {
            let mut o = lock();
            let part = loop {
                if let Some(part) = o.1.remove(&i) {
                    break part;
                }
                o = ready.wait(o).unwrap_or_else(|p| p.into_inner());
            };
            o.0 = i + 1;
            drop(o);
            ready.notify_all();
            sink(part);
        }
    });
}

/// JSON string escaping (RFC 8259 §7).
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One JSON object per message, one per line (like `postqueue -j`).
pub fn list_json(items: &[Result<(QueueState, Envelope), String>], route: Route) -> String {
    items
        .iter()
        .flatten()
        .map(|(state, e)| json_item(*state, e, route))
        .collect()
}

fn json_item(state: QueueState, e: &Envelope, route: Route) -> String {
    let queue = state.name();
    let rcpts: Vec<String> = e
        .rcpts
        .iter()
        .map(|r| {
            let why = r.state.status().map(ToString::to_string);
            let via = match r.state.is_open() {
                true => route(e, &r.addr),
                false => String::new(),
            };
            format!(
                "{{\"address\":{},\"state\":{},\"reason\":{},\"next_hop\":{}}}",
                js(strip(&r.addr.to_string())),
                js(state_word(&r.state)),
                js(why.as_deref().unwrap_or("")),
                js(&via)
            )
        })
        .collect();
    format!(
        "{{\"queue_id\":{},\"queue_name\":{},\"arrival_time\":{},\"message_size\":{},\"sender\":{},\"attempts\":{},\"next_attempt\":{},\"recipients\":[{}]}}\n",
        js(&e.id),
        js(queue),
        e.created,
        e.size,
        js(strip(&e.from.to_string())),
        e.attempts,
        e.next_attempt,
        rcpts.join(",")
    )
}

/// What `queue check` looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Health {
    pub count: usize,
    pub held: usize,
    /// Damaged files (`corrupt/`, unreadable envelopes).
    pub damaged: usize,
    /// Arrival of the oldest message.
    pub oldest: Option<u64>,
}

impl Health {
    pub fn of(items: &[Result<(QueueState, Envelope), String>], corrupt: usize) -> Health {
        let mut h = Health {
            damaged: corrupt,
            ..Health::default()
        };
        for item in items {
            match item {
                Ok((state, e)) => {
                    h.count += 1;
                    h.held += usize::from(*state == QueueState::Held);
                    h.oldest = Some(h.oldest.map_or(e.created, |o| o.min(e.created)));
                }
                Err(_) => h.damaged += 1,
            }
        }
        h
    }

    /// The Nagios plugin verdict (0 OK, 1 WARNING, 2 CRITICAL) and its one
    /// line, with performance data: CRITICAL past a limit, WARNING past
    /// half of one or with damaged files.
    pub fn verdict(
        &self,
        now: u64,
        max_age: Option<u64>,
        max_count: Option<usize>,
    ) -> (u8, String) {
        let age = self.oldest.map_or(0, |o| now.saturating_sub(o));
        let mut over = Vec::new();
        let mut near = Vec::new();
        if let Some(m) = max_count {
            if self.count > m {
                over.push(format!("more than {m} messages"));
            } else if self.count > m / 2 {
                near.push(format!("over half of {m} messages"));
            }
        }
        if let Some(m) = max_age {
            if age > m {
                over.push(format!("older than {}", time::age(m)));
            } else if age > m / 2 {
                near.push(format!("over half of {}", time::age(m)));
            }
        }
        if self.damaged > 0 {
            near.push(format!("{} damaged", self.damaged));
        }
        let (code, word, why) = match (over.is_empty(), near.is_empty()) {
            (false, _) => (2, "CRITICAL", over.join(", ")),
            (true, false) => (1, "WARNING", near.join(", ")),
            (true, true) => (0, "OK", String::new()),
        };
        let mut line = format!("SATCHEL QUEUE {word} - {} message(s)", self.count);
        if self.held > 0 {
            line.push_str(&format!(" ({} held)", self.held));
        }
        if self.count > 0 {
            line.push_str(&format!(", oldest {}", time::age(age)));
        }
        if !why.is_empty() {
            line.push_str(&format!(": {why}"));
        }
        line.push_str(&format!(
            " | messages={} held={} damaged={} oldest_age={age}s",
            self.count, self.held, self.damaged
        ));
        (code, line)
    }
}

/// Reads the spool listing.
pub fn items(spool: &Spool) -> io::Result<Vec<Result<(QueueState, Envelope), String>>> {
    spool.list()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_check_says_ok_warning_or_critical() {
        let h = Health {
            count: 6,
            held: 1,
            damaged: 0,
            oldest: Some(1000),
        };
        let (code, line) = h.verdict(1000 + 1800, Some(3600), Some(10));
        assert_eq!(code, 1, "{line}");
        assert_eq!(
            line,
            "SATCHEL QUEUE WARNING - 6 message(s) (1 held), oldest 30m: over half of 10 messages | messages=6 held=1 damaged=0 oldest_age=1800s"
        );
        assert_eq!(h.verdict(1000 + 7200, Some(3600), None).0, 2);
        assert_eq!(h.verdict(1000 + 60, None, Some(100)).0, 0);
        assert_eq!(
            Health::default().verdict(5, Some(60), Some(1)).1,
            "SATCHEL QUEUE OK - 0 message(s) | messages=0 held=0 damaged=0 oldest_age=0s"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(js("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn empty_queue_says_so() {
        assert_eq!(list_text(&[], &no_route), "Mail queue is empty\n");
        assert_eq!(list_json(&[], &no_route), "");
    }

    #[test]
    fn the_parallel_listing_is_the_sequential_one_in_order() {
        use crate::address::{ForwardPath, ReversePath};
        use crate::envelope::Recipient;
        use std::fs;
        let d = std::env::temp_dir().join(format!("satchel-list-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let spool = Spool::open(&d).unwrap();
        // Several chunks' worth, written directly (no syncs), with states,
        // dates and a damaged file mixed in.
        for i in 0..1300u64 {
            let id = format!("{:016X}", 0x0006_0000_0000_0000 + i);
            let dir = ["queue", "hold", "active"][(i % 7).min(2) as usize];
            let path = d.join(dir).join(&id);
            if i == 700 {
                fs::write(&path, "version 2\nnonsense\n").unwrap();
                continue;
            }
            let env = Envelope {
                id: id.clone(),
                created: 1_795_917_257 + i / 10,
                client: "127.0.0.1".into(),
                helo: "h".into(),
                protocol: "ESMTP".into(),
                body: "7BIT".into(),
                smtputf8: false,
                size: 3,
                from: ReversePath::parse(&format!("<s{i}@example.org>")).unwrap(),
                attempts: 1,
                next_attempt: 1_795_990_000 + i / 100,
                warned: false,
                dkim: String::new(),
                ret: None,
                envid: None,
                requiretls: false,
                rcpts: vec![Recipient {
                    addr: ForwardPath::parse(&format!("<r{i}@example.net>")).unwrap(),
                    state: if i % 3 == 0 {
                        RcptState::Deferred(crate::status::Status::parse("451 later", 4))
                    } else {
                        RcptState::Pending
                    },
                    expanded: false,
                    via: None,
                    dsn: Default::default(),
                }],
            };
            let text = env.to_text(crate::envelope::Data::Here(1000));
            let mut file = text.into_bytes();
            file.resize(1000, b'\n');
            file.extend_from_slice(b"x\r\n");
            fs::write(&path, file).unwrap();
        }
        let items = spool.list().unwrap();
        assert_eq!(items.len(), 1300);
        let route = |e: &Envelope, _: &ForwardPath| format!("[relay-of-{}]:25", e.id);
        for json in [false, true] {
            let mut out = Vec::new();
            write_list(&spool, json, &route, &mut out).unwrap();
            let want = if json {
                list_json(&items, &route)
            } else {
                list_text(&items, &route)
            };
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        let text = list_text(&items, &route);
        assert!(text.contains(", via [relay-of-0006000000000001]:25)"));
        assert!(text.contains("damaged envelope: "));
        assert!(
            text.ends_with("-- 4 Kbytes in 1299 Requests.\n"),
            "{}",
            &text[text.len() - 80..]
        );
        fs::remove_dir_all(d).unwrap();
    }
}
