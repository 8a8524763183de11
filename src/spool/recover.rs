//! Recovery at start-up (holding the runner lock): leftovers of crashed
//! writers removed, claimed messages returned to the queue, and the queue
//! ID floor raised above every ID in the spool.

use std::fs;
use std::io;
use std::sync::atomic::Ordering;

use super::{list_names, sync_dir, unlocked, Spool, KNOWN_MAX, LAST_ID};

/// What start-up recovery found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub tmp_removed: usize,
    pub orphans_removed: usize,
    pub requeued: usize,
    pub queued: usize,
}

impl Spool {
    /// Start-up recovery (call it holding the runner lock): removes dead
    /// temporary files and version 1 message files without an envelope,
    /// moves `active/` back to `queue/`, and counts what is queued.
    /// Files locked by a live writer are left alone.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut r = Recovery::default();
        for name in list_names(&self.dir("tmp"))? {
            let p = self.dir("tmp").join(&name);
            if unlocked(&p) {
                match fs::remove_file(&p) {
                    Ok(()) => r.tmp_removed += 1,
                    // Committed by its writer between the two looks.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for id in list_names(&self.dir("active"))? {
            fs::rename(self.dir("active").join(&id), self.dir("queue").join(&id))?;
            r.requeued += 1;
        }
        if r.requeued > 0 {
            sync_dir(&self.dir("queue"))?;
        }
        // One listing of each directory instead of a lookup per message:
        // start-up with a large queue stays quick.
        let mut queued = std::collections::HashSet::new();
        for d in ["queue", "hold"] {
            queued.extend(list_names(&self.dir(d))?);
        }
        r.queued = queued.len();
        // What is kept in corrupt/ for a person to look at keeps its content.
        queued.extend(list_names(&self.dir("corrupt")).unwrap_or_default());
        // From now on this process makes IDs above every one in the spool.
        let highest = queued
            .iter()
            .filter_map(|id| u64::from_str_radix(id, 16).ok())
            .max()
            .unwrap_or(0);
        {
            let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(highest);
        }
        KNOWN_MAX.store(highest, Ordering::SeqCst);
        let msg = self.dir("msg");
        let old = match list_names(&msg) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            other => other?,
        };
        for id in old {
            let p = msg.join(&id);
            // Locked = a version 1 writer still at work.
            if !queued.contains(&id) && unlocked(&p) {
                fs::remove_file(&p)?;
                r.orphans_removed += 1;
            }
        }
        Ok(r)
    }
}
