//! Recycled files: the daemon keeps the files of delivered messages and
//! reuses them for new ones (see "Recycled files" in the module above).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{sync_dir, Spool};

/// At most this many recycled files are kept.
const POOL_MAX: usize = 512;
/// Recycled files keep their blocks, so the pool holds at most this much
/// disk: a file that would take it over the budget is removed instead.
pub(super) const POOL_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Recycled files (see "Recycled files" above), in `tmp/`, each with its
/// size. Only a process that enables it keeps any.
#[derive(Debug, Default)]
pub(super) struct Pool {
    enabled: bool,
    files: Vec<(PathBuf, u64)>,
    /// Files whose old names (in `from`) may not be gone for good yet:
    /// usable once those directories are synced (see `take_recycled`).
    pending: Vec<(PathBuf, u64)>,
    from: Vec<PathBuf>,
    bytes: u64,
    next: u64,
}

impl Pool {
    fn push(&mut self, path: PathBuf, size: u64) {
        self.bytes += size;
        self.files.push((path, size));
    }

    fn pop(&mut self) -> Option<(PathBuf, u64)> {
        let (path, size) = self.files.pop()?;
        self.bytes -= size;
        Some((path, size))
    }
}

impl Spool {
    /// Keeps the files of delivered messages for reuse (the daemon does;
    /// short-lived processes do not, or their pools would be left over).
    pub fn enable_recycling(&self) {
        self.pool().enabled = true;
    }

    pub(super) fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.shared.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Disposes of the queue file of a message that is done: moved into
    /// the pool when recycling is on and there is room, removed otherwise.
    pub(super) fn discard(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path);
        if let (Ok(m), Some(name)) = (&meta, path.file_name()) {
            if m.nlink() > 1 {
                // Its content also named `msg/<id>` by a rewrite that a
                // crash cut short: both names go, and it is not reused.
                let _ = fs::remove_file(self.dir("msg").join(name));
                return fs::remove_file(path);
            }
        }
        let (true, Ok(size)) = (self.pool().enabled, meta.map(|m| m.len())) else {
            return fs::remove_file(path);
        };
        let to = {
            let mut pool = self.pool();
            if pool.files.len() + pool.pending.len() >= POOL_MAX
                || pool.bytes + size > POOL_BYTES_MAX
            {
                None
            } else {
                pool.bytes += size; // reserved while the rename runs
                pool.next += 1;
                Some(
                    self.dir("tmp")
                        .join(format!("free.{}.{}", self.shared.pid, pool.next)),
                )
            }
        };
        let Some(to) = to else {
            return fs::remove_file(path);
        };
        if fs::rename(path, &to).is_err() {
            self.pool().bytes -= size;
            return fs::remove_file(path);
        }
        // Reused only once its old name is gone for good (a crash must not
        // bring the delivered message back over a new message's bytes):
        // pending until its directory is synced, once for many files.
        let mut pool = self.pool();
        pool.pending.push((to, size));
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if !pool.from.contains(&dir) {
            pool.from.push(dir);
        }
        Ok(())
    }

    /// A recycled file to reuse, if any. When only pending ones are left,
    /// the directories they were discarded from are synced first (one
    /// sync makes all of them usable).
    pub(super) fn take_recycled(&self) -> Option<(PathBuf, u64)> {
        let (dirs, batch) = {
            let mut pool = self.pool();
            if let Some(f) = pool.pop() {
                return Some(f);
            }
            if pool.pending.is_empty() {
                return None;
            }
            (
                std::mem::take(&mut pool.from),
                std::mem::take(&mut pool.pending),
            )
        };
        let synced = dirs.iter().all(|d| sync_dir(d).is_ok());
        let mut pool = self.pool();
        for (f, size) in batch {
            if synced {
                pool.files.push((f, size));
            } else {
                pool.bytes -= size;
                let _ = fs::remove_file(&f);
            }
        }
        pool.pop()
    }

    /// Creates `dest` exclusively, locked, for reading and writing: a
    /// recycled file moved there when the pool has one, else a new file.
    /// `AlreadyExists` when `dest` exists. A recycled file keeps its old
    /// bytes: the caller writes and then sets the length (`set_len`)
    /// before syncing, so a rewrite of similar size allocates no blocks
    /// and frees none (freeing means a synchronous discard on file
    /// systems mounted with `discard`).
    pub(super) fn create_locked(&self, dest: &Path) -> io::Result<File> {
        loop {
            let recycled = self.take_recycled();
            let Some((from, size)) = recycled else {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(dest)?;
                if let Err(e) = f.lock() {
                    let _ = fs::remove_file(dest);
                    return Err(e);
                }
                return Ok(f);
            };
            // Lock first: the file is never in place unlocked.
            let Ok(f) = OpenOptions::new().read(true).write(true).open(&from) else {
                continue; // gone: try the next one
            };
            if f.lock().is_err() {
                let _ = fs::remove_file(&from);
                continue;
            }
            match crate::os::rename_noreplace(&from, dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    drop(f);
                    self.pool().push(from, size);
                    return Err(e);
                }
                Err(_) => continue,
            }
            return Ok(f);
        }
    }
}
