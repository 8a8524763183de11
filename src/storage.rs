//! Room for new mail: `queue_min_free`, `queue_min_free_percent` and
//! `queue_max_bytes`. Below them, new mail is refused for now (452 4.3.1
//! at MAIL, exit 75 from sendmail) so that a small disk never fills up
//! with queued mail; what is queued already is never touched. Free space
//! is one statvfs(2) per check; the bytes the spool holds are counted
//! again at most every few seconds.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::spool::Spool;

/// How long a count of the spool's bytes is used.
const COUNT_AGE: Duration = Duration::from_secs(5);

static COUNTED: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// Why there is no room for new mail, if there is none.
pub fn refusal(cfg: &Config, spool: Option<&Spool>) -> Option<String> {
    if let Some(why) = low_disk(cfg, &cfg.spool_dir) {
        return Some(why);
    }
    let (limit, spool) = (cfg.queue_max_bytes, spool?);
    if limit == 0 {
        return None;
    }
    let held = stored(spool);
    (held > limit).then(|| format!("the spool holds {held} bytes, over queue_max_bytes {limit}"))
}

fn low_disk(cfg: &Config, dir: &Path) -> Option<String> {
    if cfg.queue_min_free == 0 && cfg.queue_min_free_percent == 0 {
        return None;
    }
    // A spool not made yet: its parent's file system.
    let at = dir.ancestors().find(|p| p.exists())?;
    let (free, size) = crate::os::free_space(at).ok()?;
    let share = free.saturating_mul(100) / size.max(1);
    if free < cfg.queue_min_free {
        return Some(format!(
            "{} has {free} bytes free, under queue_min_free {}",
            at.display(),
            cfg.queue_min_free
        ));
    }
    if (share as usize) < cfg.queue_min_free_percent {
        return Some(format!(
            "{} has {share}% free, under queue_min_free_percent {}",
            at.display(),
            cfg.queue_min_free_percent
        ));
    }
    None
}

fn stored(spool: &Spool) -> u64 {
    let mut counted = COUNTED.lock().unwrap_or_else(|p| p.into_inner());
    match *counted {
        Some((at, n)) if at.elapsed() < COUNT_AGE => n,
        _ => {
            let n = spool.stored_bytes();
            *counted = Some((Instant::now(), n));
            n
        }
    }
}
