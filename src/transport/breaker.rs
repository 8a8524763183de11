//! The smarthost circuit breaker: a relay host that refuses our
//! credentials or our mail by policy (535, 5.7.x) again and again is not a
//! reason to bounce every message, nor to knock on its door for ever.
//! Such answers keep the mail queued (deferred) and are counted per host;
//! after `relayhost_failure_limit` of them in a row the breaker opens:
//! nothing is sent to that host, every message waits, one warning is
//! logged and one notice goes to postmaster. `queue flush` or a reload
//! closes every breaker. An accepted message resets the count.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::smtp::client::Outcome;
use crate::smtp::reply::Enhanced;
use crate::status::Status;

#[derive(Default)]
struct State {
    /// Refusals in a row, per host (as the configuration names it).
    failures: HashMap<String, u32>,
    /// Hosts whose breaker is open.
    open: Vec<String>,
    /// Opened since the delivery code last asked: a notice is owed.
    news: Vec<(String, String)>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(State::default))
}

/// The deferral for every recipient while `host`'s breaker is open.
pub fn refused(host: &str) -> Option<Status> {
    with(|s| s.open.iter().any(|h| h == host)).then(|| {
        Status::new(
            451,
            Enhanced(4, 7, 0),
            format!(
                "relay host {host} refused us repeatedly; sending to it is paused until `satchel queue flush` or a reload"
            ),
        )
    })
}

/// An authentication or policy refusal among `outcomes`, if any.
fn refusal(outcomes: &[Outcome]) -> Option<&Status> {
    outcomes.iter().find_map(|o| match o {
        Outcome::Failed(s) | Outcome::Deferred(s)
            if s.code == Some(535) || s.text.contains("authentication failed") =>
        {
            Some(s)
        }
        Outcome::Failed(s) if host_refused(s) => Some(s),
        _ => None,
    })
}

/// A 5.7.x refusal of us by the host (a policy, our credentials), not
/// 5.7.30: REQUIRETLS mail that cannot go (RFC 8689), the message's own
/// fault, which bounces.
fn host_refused(s: &Status) -> bool {
    s.enhanced.0 == 5 && s.enhanced.1 == 7 && s.enhanced.2 != 30
}

/// Looks at what `host` answered: its refusals become deferrals (the mail
/// stays queued) and are counted; `limit` in a row open the breaker.
pub fn record(host: &str, outcomes: &mut [Outcome], limit: u32) {
    if limit == 0 {
        return;
    }
    let Some(why) = refusal(outcomes).cloned() else {
        if outcomes.iter().any(|o| matches!(o, Outcome::Sent(_))) {
            with(|s| s.failures.remove(host));
        }
        return;
    };
    for o in outcomes.iter_mut() {
        if let Outcome::Failed(s) = o {
            if host_refused(s) || s.code == Some(535) {
                *o = Outcome::Deferred(Status::new(
                    451,
                    Enhanced(4, 7, 0),
                    format!("relay host refused: {s}"),
                ));
            }
        }
    }
    with(|s| {
        let n = s.failures.entry(host.to_string()).or_insert(0);
        *n += 1;
        if *n >= limit && !s.open.iter().any(|h| h == host) {
            log::warn!(
                "warning: relay host {host} refused us {n} times in a row ({why}); sending to it is paused, mail is kept"
            );
            s.open.push(host.to_string());
            s.news.push((host.to_string(), why.to_string()));
        }
    });
}

/// Breakers opened since the last call: (host, the last refusal).
pub fn take_news() -> Vec<(String, String)> {
    with(|s| std::mem::take(&mut s.news))
}

/// Closes every breaker (`queue flush`, a reload).
pub fn reset() {
    with(|s| *s = State::default());
}
