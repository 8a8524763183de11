//! Rate limits per client address, as Postfix's anvil(8): connections,
//! messages (MAIL commands) and recipients (RCPT commands) per time unit.
//! Each address has one window that starts with its first event and lasts
//! `anvil_rate_time_unit`; its counters start again after it. In memory
//! only, shared by every session of the daemon and kept across reloads.
//! The table is bounded: expired windows are dropped when it grows, and
//! when it is full of live ones a new address is not counted (and so not
//! limited) rather than the memory growing without end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most (about 50 bytes each).
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connection,
    Message,
    Recipient,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    counts: [u32; 3],
}

#[derive(Default)]
pub struct Anvil {
    table: Mutex<HashMap<IpAddr, Window>>,
}

impl Anvil {
    /// Counts one `event` of `ip` at `now`; false when that makes it go
    /// over `limit` in the current window (0 = no limit, nothing counted).
    pub fn allow(
        &self,
        ip: IpAddr,
        event: Event,
        limit: u32,
        unit: Duration,
        now: Instant,
    ) -> bool {
        if limit == 0 {
            return true;
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_CLIENTS && !table.contains_key(&ip) {
            table.retain(|_, w| now.duration_since(w.start) < unit);
            if table.len() >= MAX_CLIENTS {
                return true;
            }
        }
        let w = table.entry(ip).or_insert(Window {
            start: now,
            counts: [0; 3],
        });
        if now.duration_since(w.start) >= unit {
            *w = Window {
                start: now,
                counts: [0; 3],
            };
        }
        let n = &mut w.counts[event as usize];
        *n = n.saturating_add(1);
        *n <= limit
    }

    /// Addresses in the table (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_rate_is_refused_until_the_window_ends() {
        let a = Anvil::default();
        let (ip, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let unit = Duration::from_secs(60);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.allow(ip, Event::Message, 3, unit, t0));
        }
        assert!(!a.allow(ip, Event::Message, 3, unit, t0 + Duration::from_secs(59)));
        // Other counters and other addresses are their own.
        assert!(a.allow(ip, Event::Recipient, 3, unit, t0));
        assert!(a.allow(other, Event::Message, 3, unit, t0));
        // A new window.
        assert!(a.allow(ip, Event::Message, 3, unit, t0 + unit));
        // No limit: nothing is counted.
        assert!(a.allow("192.0.2.3".parse().unwrap(), Event::Connection, 0, unit, t0));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let a = Anvil::default();
        let unit = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            a.allow(ip, Event::Connection, 1, unit, t0);
        }
        assert_eq!(a.len(), MAX_CLIENTS);
        let new: IpAddr = "192.0.2.1".parse().unwrap();
        // Full of live windows: the newcomer is let through, not tracked.
        assert!(a.allow(new, Event::Connection, 1, unit, t0));
        assert!(a.allow(new, Event::Connection, 1, unit, t0));
        assert_eq!(a.len(), MAX_CLIENTS);
        // Once the windows are over, they make room.
        assert!(a.allow(new, Event::Connection, 1, unit, t0 + unit));
        assert_eq!(a.len(), 1);
    }
}
