//! The queue-file format: the envelope text at the head of the file,
//! the message after it at the offset its `data` line gives (or in
//! `msg/<id>` once the envelope has changed), and reading and rewriting
//! such files without ever copying the content.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{open_noatime, sync_dir, Spool, MAX_HEAD};
use crate::envelope::{Data, Envelope};

/// Where the content of a queued message is: in its queue file after the
/// envelope, or (version 1) in `msg/<id>` from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Content {
    /// The content's bytes, read from the start.
    pub fn open(&self) -> io::Result<ContentReader> {
        let mut f = open_noatime(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(ContentReader {
            file: f,
            left: self.len,
        })
    }

    /// True when the content is a version 1 message file, not part of the
    /// queue file at `queue_file`.
    pub fn is_separate(&self, queue_file: &Path) -> bool {
        self.path != queue_file
    }
}

/// Exactly the `len` bytes of a message's content: reading fails, rather
/// than ending early, if the file is shorter than its envelope says, so a
/// damaged or mistaken file is never delivered cut short.
#[derive(Debug)]
pub struct ContentReader {
    file: File,
    left: u64,
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 && max > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the message is {} bytes shorter than its envelope says",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A queue file that was read.
#[derive(Debug)]
pub struct Queued {
    pub env: Envelope,
    pub content: Content,
    /// The envelope as stored (`queue show` prints it as it is).
    pub text: String,
    /// The queue file as it was opened and read.
    pub file: File,
    /// The content is in a file of its own (`msg/<id>`), not in `file`.
    pub separate: bool,
}

impl Queued {
    /// The content's bytes, read from the start: from the file that was
    /// read, so a rename or rewrite meanwhile cannot swap it for another.
    pub fn open_content(&self) -> io::Result<ContentReader> {
        if self.separate {
            return self.content.open();
        }
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(self.content.offset))?;
        Ok(ContentReader {
            file: f,
            left: self.content.len,
        })
    }
}

/// Why a queue file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Reading failed (`NotFound`: the message moved on).
    Io(io::Error),
    /// The file is damaged: it is not to be acted upon.
    Damaged(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => e.fmt(f),
            ReadError::Damaged(d) => f.write_str(d),
        }
    }
}

/// The head of a queue file: `env` as text with its content at `room`, or
/// right after the text when it does not fit, padded with newlines to
/// where the content starts.
pub(super) fn queue_head(env: &Envelope, room: u64) -> Vec<u8> {
    // The text with the longest possible offset bounds every other.
    let most = env.to_text(Data::Here(u64::MAX)).len() as u64;
    let data = room.max(most);
    let mut head = env.to_text(Data::Here(data)).into_bytes();
    head.resize(data as usize, b'\n');
    head
}

/// Reads the envelope at the head of the queue file `f`: the envelope,
/// where its content is, and its text as stored; `f` is handed back.
pub(super) fn read_head(mut f: File) -> Result<(Envelope, Data, Vec<u8>, File), ReadError> {
    // Most envelopes are a few hundred bytes: read little, grow if needed.
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    let end = loop {
        if let Some(p) = find_end(&buf[..len]) {
            break p;
        }
        if len == buf.len() {
            if len >= MAX_HEAD {
                return Err(ReadError::Damaged("no 'end' line".into()));
            }
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break len,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    };
    buf.truncate(end);
    let text = std::str::from_utf8(&buf).map_err(|e| ReadError::Damaged(e.to_string()))?;
    let (env, data) = Envelope::parse(text).map_err(|e| ReadError::Damaged(e.to_string()))?;
    Ok((env, data, buf, f))
}

/// The length of the envelope text in `b` (through its `end` line), once
/// it is all there.
pub(super) fn find_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(p) = b[at..].iter().position(|&c| c == b'\n') {
        let line = at + p + 1;
        if b[line..].starts_with(b"end\n") {
            return Some(line + 4);
        }
        at = line;
    }
    None
}

impl Spool {
    /// Writes a whole file at `dest` (created locked, see `create_locked`):
    /// `head`, then `content` copied (in the kernel where it can), cut to
    /// length, synced. `len` is the length `content` must have.
    pub(super) fn write_file(
        &self,
        dest: &Path,
        head: &[u8],
        content: &mut impl Read,
        len: u64,
    ) -> io::Result<File> {
        let mut f = self.create_locked(dest)?;
        let written = (|| {
            f.write_all(head)?;
            let n = io::copy(content, &mut f)?;
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the content is {n} bytes, its envelope says {len}"),
                ));
            }
            f.set_len(head.len() as u64 + n)?;
            f.sync_data()
        })();
        match written {
            Ok(()) => Ok(f),
            Err(e) => {
                let _ = fs::remove_file(dest);
                Err(e)
            }
        }
    }

    /// Replaces the envelope of the claimed message at `path` by `env`,
    /// atomically and durably, and returns where its content is now.
    ///
    /// The content is never copied: the first change gives the queue file
    /// a second name, `msg/<id>` (a hard link, its directory synced), and
    /// from then on the message is an envelope alone (`data msg N`) and
    /// that file. The envelope is written to `tmp/`, synced and renamed
    /// over `path`, whose directory is synced: a crash leaves the old or
    /// the new envelope, and either finds its content. So a deferral costs
    /// a few hundred bytes of disk, not a copy of the message.
    pub(super) fn rewrite(
        &self,
        path: &Path,
        env: &Envelope,
        content: &Content,
    ) -> io::Result<Content> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?;
        let msg = self.dir("msg").join(name);
        if !content.is_separate(path) {
            self.link_content(path, &msg)?;
        }
        let tmp = self.dir("tmp").join(name);
        let head = env.to_text(Data::Msg(content.offset));
        let replaced = (|| {
            self.write_file(&tmp, head.as_bytes(), &mut io::empty(), 0)?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = replaced {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Renamed: whichever envelope a crash leaves finds the content in
        // msg/<id>, so a failed sync is no reason to go on with the old one.
        if let Err(e) = sync_dir(path.parent().unwrap_or(Path::new("."))) {
            log::warn!(
                "warning: {}: directory sync after a rewrite: {e}",
                path.display()
            );
        }
        Ok(Content {
            path: msg,
            offset: content.offset,
            len: content.len,
        })
    }

    /// Gives the queue file `path` the second name `msg` (see `rewrite`);
    /// fine if it already has it (a rewrite a crash cut short), an error if
    /// the name is another file's.
    fn link_content(&self, path: &Path, msg: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        fs::create_dir_all(self.dir("msg"))?;
        if let Err(e) = fs::hard_link(path, msg) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            // Already this file (a rewrite a crash cut short); another file
            // under that name is never removed: it may be all there is of
            // some message.
            let (a, b) = (fs::metadata(path)?, fs::metadata(msg)?);
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is another file", msg.display()),
                ));
            }
        }
        sync_dir(&self.dir("msg"))
    }

    /// Reads the queue file at `path`: its envelope, and where its content
    /// is, checked to be all there.
    pub(super) fn read_queued(&self, path: &Path) -> Result<Queued, ReadError> {
        let (env, data, text, f) = open_noatime(path)
            .map_err(ReadError::Io)
            .and_then(read_head)?;
        let content = match data {
            Data::Here(offset) => Content {
                path: path.to_path_buf(),
                offset,
                len: env.size,
            },
            Data::Msg(offset) => Content {
                path: self.dir("msg").join(&env.id),
                offset,
                len: env.size,
            },
        };
        let have = if content.is_separate(path) {
            fs::metadata(&content.path).map(|m| m.len())
        } else {
            f.metadata().map(|m| m.len())
        };
        // A damaged `data` or `size` may be anything: no overflow.
        let end = content.offset.checked_add(content.len);
        match have {
            Ok(n) if end.is_some_and(|end| n >= end) => Ok(Queued {
                env,
                separate: content.is_separate(path),
                content,
                text: String::from_utf8_lossy(&text).into_owned(),
                file: f,
            }),
            Ok(n) => Err(ReadError::Damaged(format!(
                "the message is cut short: {} of {} bytes",
                n.saturating_sub(content.offset),
                content.len
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ReadError::Damaged("the message file is missing".into()))
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }
}
