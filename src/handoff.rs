//! A blocking hand-off between threads: a queue under a mutex and a
//! condition variable. It carries connections to the session pool, and
//! messages between the delivery scheduler and its pool.
//!
//! A waiting thread parks at once. crossbeam's channels (and std's, which
//! are the same design) spin and call `sched_yield` a few times before
//! they park; at 8 sessions on a 2-core host that was about 8
//! `sched_yield` calls per message, and the cores were already saturated.
//! There is no disconnection: the threads that wait here live as long as
//! the process.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Handoff<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
}

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Handoff {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            inner: Arc::new(Inner {
                items: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            }),
        }
    }
}

impl<T> Handoff<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.inner.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` and wakes one waiting thread.
    pub fn send(&self, item: T) {
        self.items().push_back(item);
        self.inner.ready.notify_one();
    }

    /// The oldest item, waiting for one as long as it takes.
    pub fn recv(&self) -> T {
        let mut items = self.items();
        loop {
            if let Some(item) = items.pop_front() {
                return item;
            }
            items = self
                .inner
                .ready
                .wait(items)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The oldest item, or `None` after waiting `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now().checked_add(timeout);
        let mut items = self.items();
        loop {
            if let Some(item) = items.pop_front() {
                return Some(item);
            }
            let left = match deadline {
                Some(d) => d.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600), // "forever": wait again after
            };
            items = self
                .inner
                .ready
                .wait_timeout(items, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The oldest item if there is one, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.items().pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_once_each_in_order_across_threads() {
        let h: Handoff<u32> = Handoff::new();
        let got = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (h, got) = (h.clone(), got.clone());
                std::thread::spawn(move || loop {
                    let n = h.recv();
                    if n == u32::MAX {
                        return;
                    }
                    got.lock().unwrap().push(n);
                })
            })
            .collect();
        for n in 0..1000 {
            h.send(n);
        }
        for _ in 0..4 {
            h.send(u32::MAX);
        }
        for w in workers {
            w.join().unwrap();
        }
        let mut got = got.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        // One thread alone sees them in the order sent.
        for n in 0..3 {
            h.send(n);
        }
        assert_eq!(
            (h.recv(), h.try_recv(), h.try_recv()),
            (0, Some(1), Some(2))
        );
        assert_eq!(h.try_recv(), None);
    }

    #[test]
    fn a_timed_wait_ends_empty_or_with_what_came() {
        let h: Handoff<&str> = Handoff::new();
        assert_eq!(h.recv_timeout(Duration::from_millis(20)), None);
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            h2.send("late");
        });
        assert_eq!(h.recv_timeout(Duration::from_secs(30)), Some("late"));
        t.join().unwrap();
        h.send("now");
        assert_eq!(h.recv_timeout(Duration::ZERO), Some("now"));
    }
}
