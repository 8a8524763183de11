//! The spool: the only thing the receiving and delivering halves share.
//! It owns the directory layout, queue IDs, the crash protocol and the
//! queue-file format. It never talks to the network and knows nothing of
//! SMTP.
//!
//! ```text
//! spool/tmp/<id>       a queue file being written (locked by its writer)
//! spool/queue/<id>     a waiting message; its rename into place is the commit
//! spool/active/<id>    a message claimed by a delivery thread
//! spool/hold/<id>      a message put on hold by the operator (never delivered until released)
//! spool/corrupt/<id>   queue files that failed to parse, kept for a human
//! spool/msg/<id>       the content of a message whose envelope changed (and of
//!                      version 1 envelopes, from before queue files)
//! ```
//!
//! ## Queue files
//!
//! One file per message, as in Postfix: the envelope (see `envelope`)
//! first, then the message bytes, `Received:` first, at the offset the
//! envelope's `data` line gives. A message being received is written
//! `HEAD_ROOM` bytes into its file; at the end of DATA the envelope is
//! written into the room before it (padded with newlines), so one file,
//! one sync, makes the message durable. An envelope that outgrows the room
//! (hundreds of recipients) gets a new file with the content copied after
//! it.
//!
//! Delivery never updates a file in place and never copies the content:
//! the first change of an envelope (a deferral, an alias expansion) links
//! the queue file as `msg/<id>` and replaces the queue file by the new
//! envelope alone, which says where the content is (`data msg N`); see
//! `Spool::rewrite`. The hot path, a message delivered at the first
//! attempt, stays one file.
//!
//! ## Receiving: the crash protocol
//!
//! | step | action                                          | a crash after it leaves            | recovery at start                       |
//! |------|-------------------------------------------------|------------------------------------|-----------------------------------------|
//! | 1    | create `tmp/<id>` (O_EXCL, or a recycled file), lock it, write the content after the room | a `tmp/<id>`  | unlocked: removed   |
//! | 2    | write the envelope into the room, cut the file to length, fdatasync it | same                               | same                                    |
//! | 3    | rename `tmp/<id>` -> `queue/<id>`               | the rename may or may not persist  | queued, or a `tmp/` file removed (no 250 sent) |
//! | 4    | fsync `queue/`                                  | a queued message                   | found by the scan                       |
//! | 5    | unlock; reply `250 Ok: queued as <id>`          | a queued message                   | found by the scan                       |
//!
//! A 250 is sent only after step 4, so an acknowledged message is on disk
//! with its envelope.
//!
//! ## Group commit
//!
//! Each session syncs its own file (step 2, with fdatasync: the new size
//! and blocks are what matter) in its own thread, so the syncs of many
//! sessions overlap and the kernel merges their flushes. Steps 3 and 4
//! are shared by the sessions that reach them at the same time: a session
//! that finds no commit running becomes the leader, takes every message
//! waiting, renames each into `queue/`, fsyncs `queue/` once, and wakes
//! the others with their own results. Sessions arriving meanwhile wait
//! for the next leader, which is one of them. With one session nothing
//! waits; with many, one directory fsync serves a whole batch. No message
//! hears 250 before its own file and the directory have been synced.
//!
//! Nothing is half-visible: a file in `tmp/` is not a message. Its writer
//! holds an advisory lock on it from step 1 to step 5, so another
//! process's recovery (an inetd-mode session or a queue runner sharing the
//! spool) never takes a live transaction for a leftover.
//!
//! ## Recycled files
//!
//! Creating and deleting inodes is most of what a busy spool costs the
//! kernel (a profile of 32 sessions showed ext4's inode allocator in half
//! of the CPU time, scanning past recently deleted inodes). So the daemon
//! does not delete the file of a delivered message: it renames it to
//! `tmp/free.<pid>.<n>` (at most `POOL_MAX` files, and never more than
//! `POOL_BYTES_MAX`, 32 MiB, of disk: beyond that a file is removed), and
//! the next message takes one instead of creating a file. A recycled file
//! is locked first, then moved into place with RENAME_NOREPLACE (so a
//! name is never taken twice, by two threads or two processes), then
//! rewritten and cut to its new length before it is synced (its old
//! blocks are reused: nothing to allocate, nothing to free). That is step
//! 1 above, with the same guarantees as an exclusive create. A crash
//! leaves unlocked `free.*` files, which recovery removes like any other
//! leftover.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::Envelope;

mod incoming;
pub mod maildrop;
mod policies;
mod queuefile;
mod recover;
mod recycle;
#[cfg(test)]
mod tests;

use incoming::Commits;
pub use incoming::Incoming;
#[cfg(test)]
use queuefile::find_end;
use queuefile::read_head;
pub use queuefile::{Content, ContentReader, Queued, ReadError};
pub use recover::Recovery;
use recycle::Pool;

/// Spool sub-directories, created at open (`msg/` is made by the first
/// rewrite of an envelope).
pub const DIRS: [&str; 5] = ["tmp", "queue", "active", "hold", "corrupt"];

/// Room for the envelope before the content of a message being received:
/// enough for a few dozen recipients, and with a small message still one
/// 4 KiB block.
const HEAD_ROOM: u64 = 2048;

/// The longest envelope read: far beyond any real one (a recipient line is
/// at most a few hundred bytes), a bound on what a damaged file without an
/// `end` line can make a reader hold.
const MAX_HEAD: usize = 64 << 20;

/// A queue ID: 16 upper-case hex digits, the microseconds since the epoch
/// at arrival (strictly increasing within a process), so IDs sort by
/// arrival and stay unique across restarts. A clash (another process in
/// the same microsecond, or a clock stepped back while older messages
/// wait) is prevented when the message is created: `tmp/<id>` is taken
/// exclusively; a process that has listed the spool (the daemon, a queue
/// run) makes its IDs above every ID it has seen there, and any other
/// looks the ID up in `queue/`, `active/` and `hold/`. The commit's
/// RENAME_NOREPLACE into `queue/` is the last guard.
pub type QueueId = String;

static LAST_ID: Mutex<u64> = Mutex::new(0);

/// The highest queue ID known to be in the spool once this process has
/// listed it (`recover`, then `note_id`); `u64::MAX` until then. New IDs
/// are made above it, so only an ID at or below it (a process that has not
/// listed the spool) needs the look-up in `queue/`, `active/` and `hold/`.
static KNOWN_MAX: AtomicU64 = AtomicU64::new(u64::MAX);

/// Records that the queue ID `id` is in the spool (the daemon's scans):
/// the IDs this process makes from now on are above it.
pub fn note_id(id: &str) {
    let Ok(v) = u64::from_str_radix(id, 16) else {
        return;
    };
    let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
    *last = (*last).max(v);
    let _ = KNOWN_MAX.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
        (k != u64::MAX && k < v).then_some(v)
    });
}

fn next_id_value() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
    *last = now.max(*last + 1);
    *last
}

/// True for strings that can be queue IDs (and so safe as file names).
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    shared: Arc<Shared>,
}

/// What every clone of a `Spool` shares: the group committer, the
/// directories where messages wait (kept open so that a commit or a
/// listing does not look them up again), and the recycled files.
#[derive(Debug)]
struct Shared {
    queue_dir: File,
    active_dir: File,
    hold_dir: File,
    commits: Mutex<Commits>,
    done: Condvar,
    pool: Mutex<Pool>,
    /// This process's ID, for the names of recycled files.
    pid: u32,
}

/// Where a message is: each state is a directory of the spool, and a
/// message changes state by a rename (the qmail way: the queue is a state
/// table on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueueState {
    /// Waiting for its next attempt (`queue/`).
    Queued,
    /// Claimed by a delivery thread (`active/`).
    Active,
    /// Put on hold by the operator (`hold/`).
    Held,
    /// Damaged, kept for a person to look at (`corrupt/`).
    Corrupt,
}

impl QueueState {
    fn dir(self) -> &'static str {
        match self {
            QueueState::Queued => "queue",
            QueueState::Active => "active",
            QueueState::Held => "hold",
            QueueState::Corrupt => "corrupt",
        }
    }

    /// The directory's name, for listings (`queue_name` in JSON).
    pub fn name(self) -> &'static str {
        self.dir()
    }
}

/// Gives the service user what root made in the spool at `root` (a first
/// start, a root `queue run`), never what is in `maildrop/` (see
/// `os::chown_tree`).
pub fn hand_over(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    crate::os::chown_tree(root, uid, gid, 3, Some(maildrop::NAME))
}

/// The control socket of the daemon that serves the spool at `root`.
pub fn control_path(root: &Path) -> PathBuf {
    root.join("control")
}

/// Binds the control socket of the spool at `root` (one left by a dead
/// daemon is replaced); refuses when a live server already answers there.
/// Any local user may ask for a scan (after a maildrop submission) or a
/// flush, as with Postfix's public pickup and qmgr FIFOs: mode 0666.
pub fn bind_control(root: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    let path = control_path(root);
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "another satchel already serves the spool {} ({} answers)",
            root.display(),
            path.display()
        ));
    }
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
    Ok(listener)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating when needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        for d in DIRS {
            fs::create_dir_all(root.join(d))?;
        }
        Spool::open_existing(root)
    }

    /// Opens the spool at `root` without creating anything (the read-only
    /// tools): `NotFound` when it has not been made yet.
    pub fn open_existing(root: &Path) -> io::Result<Spool> {
        Ok(Spool {
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                queue_dir: File::open(root.join("queue"))?,
                active_dir: File::open(root.join("active"))?,
                hold_dir: File::open(root.join("hold"))?,
                commits: Mutex::new(Commits::default()),
                done: Condvar::new(),
                pool: Mutex::new(Pool::default()),
                pid: std::process::id(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn path(&self, state: QueueState, id: &str) -> PathBuf {
        self.dir(state.dir()).join(id)
    }

    /// Where message `id` is, if it waits, is claimed or is held.
    pub fn locate(&self, id: &str) -> Option<QueueState> {
        [QueueState::Queued, QueueState::Held, QueueState::Active]
            .into_iter()
            .find(|&st| fs::symlink_metadata(self.path(st, id)).is_ok())
    }

    /// The claim: whoever renames `queue/<id>` to `active/<id>` first owns
    /// the message (one message, one delivery thread or process).
    /// `Ok(false)` when it is gone (delivered, deleted, held, taken).
    pub fn claim(&self, id: &str) -> io::Result<bool> {
        match fs::rename(
            self.path(QueueState::Queued, id),
            self.path(QueueState::Active, id),
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns a claimed message to `queue/`, due at `next` (seconds since
    /// the epoch). Its mtime carries that time for the start-up scan (as
    /// Postfix does with deferred queue files): only a hint, lost in a
    /// crash the message is merely tried earlier.
    pub fn requeue(&self, id: &str, next: u64) -> io::Result<()> {
        let active = self.path(QueueState::Active, id);
        if let Ok(f) = File::options().write(true).open(&active) {
            let _ = f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(next));
        }
        fs::rename(&active, self.path(QueueState::Queued, id))?;
        // Renamed: it waits in queue/ whatever the sync says (a crash
        // before the sync brings it back to active/, which recovery
        // requeues).
        if let Err(e) = sync_dir(&self.dir(QueueState::Queued.dir())) {
            log::warn!("warning: {id}: directory sync after requeue: {e}");
        }
        Ok(())
    }

    /// Sets a claimed message whose file is damaged aside in `corrupt/`.
    pub fn quarantine(&self, id: &str) -> io::Result<()> {
        fs::rename(
            self.path(QueueState::Active, id),
            self.path(QueueState::Corrupt, id),
        )
    }

    /// Moves a waiting message to `hold/`. `Ok(false)`: held already.
    pub fn hold(&self, id: &str) -> io::Result<bool> {
        self.shift(id, QueueState::Queued, QueueState::Held)
    }

    /// Returns a held message to `queue/`, due at once (its mtime is now).
    /// `Ok(false)`: it was not on hold.
    pub fn release(&self, id: &str) -> io::Result<bool> {
        let moved = self.shift(id, QueueState::Held, QueueState::Queued)?;
        if moved {
            let _ = File::options()
                .write(true)
                .open(self.path(QueueState::Queued, id))
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
        Ok(moved)
    }

    /// `from` -> `to`, the new directory synced; `Ok(false)` when the
    /// message is in `to` already, `NotFound` when in neither.
    fn shift(&self, id: &str, from: QueueState, to: QueueState) -> io::Result<bool> {
        match fs::rename(self.path(from, id), self.path(to, id)) {
            Ok(()) => sync_dir(&self.dir(to.dir())).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.path(to, id).exists() => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes a waiting or held message, with its content file if it has
    /// one of its own.
    pub fn delete(&self, id: &str, state: QueueState) -> io::Result<()> {
        fs::remove_file(self.path(state, id))?;
        let _ = fs::remove_file(self.dir("msg").join(id));
        Ok(())
    }

    /// A claimed message that is done: its file goes (to the recycled
    /// files when the pool has room), and a version 1 content file too.
    pub fn finish(&self, id: &str, content: &Content) -> io::Result<()> {
        let active = self.path(QueueState::Active, id);
        let separate = content.is_separate(&active);
        let r = self.discard(&active);
        if separate {
            let _ = fs::remove_file(&content.path);
        }
        r
    }

    /// The IDs in `queue/` with their next attempt (the mtime, see
    /// `requeue`), from one listing and a stat each, read as they are
    /// consumed (a queue of 100,000 is never held as a list).
    pub fn waiting(&self) -> io::Result<impl Iterator<Item = (QueueId, Option<u64>)>> {
        let entries = fs::read_dir(self.dir(QueueState::Queued.dir()))?;
        Ok(entries.flatten().filter_map(|e| {
            let id = e
                .file_name()
                .into_string()
                .ok()
                .filter(|id| is_queue_id(id))?;
            let due = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            Some((id, due))
        }))
    }

    /// True when `id` waits in `queue/` (not held, not being delivered).
    pub fn is_waiting(&self, id: &str) -> bool {
        self.path(QueueState::Queued, id).exists()
    }

    /// Reads the claimed message `id` (see `read_queued`).
    pub fn read_claimed(&self, id: &str) -> Result<Queued, ReadError> {
        self.read_queued(&self.path(QueueState::Active, id))
    }

    /// Reads message `id` where it is now (`queue show`).
    pub fn read_in(&self, state: QueueState, id: &str) -> Result<Queued, ReadError> {
        self.read_queued(&self.path(state, id))
    }

    /// Replaces the envelope of the claimed message `id` (see `rewrite`).
    pub fn record(&self, id: &str, env: &Envelope, content: &Content) -> io::Result<Content> {
        self.rewrite(&self.path(QueueState::Active, id), env, content)
    }

    /// Takes the runner lock, waiting as long as another process (a `queue
    /// run`) holds it.
    pub fn wait_runner_lock(&self) -> io::Result<File> {
        if let Some(f) = self.try_runner_lock()? {
            return Ok(f);
        }
        log::info!("waiting for the running queue run to finish");
        let f = OpenOptions::new()
            .write(true)
            .open(self.root.join("runner.lock"))?;
        f.lock()?;
        Ok(f)
    }

    /// Takes the queue-runner lock (`spool/runner.lock`): whoever holds it
    /// (the daemon, or one `satchel queue run`) is the only process that
    /// delivers, and so the only one allowed to move `active/` back to
    /// `queue/`. `Ok(None)` when another process holds it. The lock lasts
    /// as long as the returned file is open; the kernel drops it when the
    /// process dies, so a crashed runner never blocks the next one.
    pub fn try_runner_lock(&self) -> io::Result<Option<File>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join("runner.lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// True while some process holds the runner lock.
    pub fn runner_active(&self) -> bool {
        matches!(self.try_runner_lock(), Ok(None))
    }

    /// Every message in `queue/`, `active/` and `hold/`, sorted by ID
    /// (arrival). Damaged queue files are returned as errors naming the file.
    pub fn list(&self) -> io::Result<Vec<Result<(QueueState, Envelope), String>>> {
        Ok(self
            .list_ids()?
            .into_iter()
            .filter_map(|(id, state)| self.read_envelope(&id, state))
            .collect())
    }

    /// The bytes the messages in the spool take (queue, active, hold; and
    /// the separate content files of old-format messages).
    pub fn stored_bytes(&self) -> u64 {
        ["queue", "active", "hold", "msg"]
            .iter()
            .filter_map(|d| fs::read_dir(self.dir(d)).ok())
            .flatten()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// How many damaged files wait in `corrupt/` for a person.
    pub fn corrupt_count(&self) -> usize {
        list_names(&self.dir("corrupt")).map_or(0, |n| n.len())
    }

    /// The IDs of every message in `queue/`, `active/` and `hold/`, sorted
    /// by ID (arrival): a listing that holds names, not envelopes, so that
    /// a large queue can be streamed with `read_envelope`.
    pub fn list_ids(&self) -> io::Result<Vec<(QueueId, QueueState)>> {
        let mut out = Vec::new();
        for (dir, state) in [
            ("queue", QueueState::Queued),
            ("active", QueueState::Active),
            ("hold", QueueState::Held),
        ] {
            for id in list_names(&self.dir(dir))? {
                if is_queue_id(&id) {
                    out.push((id, state));
                }
            }
        }
        // IDs are hexadecimal numbers of one width: sorted as numbers,
        // not strings (a tenth of the instructions of listing the queue).
        let mut keyed: Vec<(u64, QueueState, QueueId)> = out
            .into_iter()
            .map(|(id, state)| (u64::from_str_radix(&id, 16).unwrap_or(0), state, id))
            .collect();
        keyed.sort_unstable_by_key(|&(n, state, _)| (n, state));
        Ok(keyed
            .into_iter()
            .map(|(_, state, id)| (id, state))
            .collect())
    }

    /// The envelope of `id` in the directory of `state`; `None` when it
    /// has moved on since it was listed (delivered or claimed meanwhile).
    pub fn read_envelope(
        &self,
        id: &str,
        state: QueueState,
    ) -> Option<Result<(QueueState, Envelope), String>> {
        let opened = match state {
            QueueState::Queued => crate::os::open_in(&self.shared.queue_dir, id),
            QueueState::Active => crate::os::open_in(&self.shared.active_dir, id),
            QueueState::Held => crate::os::open_in(&self.shared.hold_dir, id),
            QueueState::Corrupt => File::open(self.path(state, id)),
        };
        match opened.map_err(ReadError::Io).and_then(read_head) {
            Ok((env, ..)) => Some(Ok((state, env))),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("{}: {e}", self.path(state, id).display()))),
        }
    }

    /// True when `f`, opened as message `id`, is still one of its names
    /// (in `queue/`, `active/`, `hold/`, or `msg/` after a rewrite): it has
    /// not been delivered, and its file recycled, since.
    pub fn still_names(&self, id: &str, f: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = f.metadata() else {
            return false;
        };
        ["queue", "active", "hold", "msg"].iter().any(|d| {
            fs::metadata(self.dir(d).join(id))
                .is_ok_and(|n| (n.dev(), n.ino()) == (m.dev(), m.ino()))
        })
    }
}

/// Opens `p` for reading without updating its access time: a deferred
/// message's mtime is in the future (its next attempt), so with
/// `relatime` every read would otherwise dirty the inode. O_NOATIME is
/// only allowed to the file's owner; others read it the usual way.
pub fn open_noatime(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
    {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(p),
        r => r,
    }
}

/// True when nobody holds the advisory lock on `p` (or it vanished).
fn unlocked(p: &Path) -> bool {
    match File::open(p) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => false,
    }
}

fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Ok(name) = e.file_name().into_string() {
            v.push(name);
        }
    }
    Ok(v)
}
