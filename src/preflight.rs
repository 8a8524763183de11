//! What `serve` would die on, found before anything is created: the
//! files the settings name (TLS certificate and key, and that they belong
//! together; the aliases, credentials and CA files) and the directories the
//! service user must write, and that the source addresses of outgoing
//! connections are this host's. `check-config` prints every problem;
//! `serve` and `queue run` stop at them with the setting named. Reads
//! metadata and files, never writes, never sends a packet.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, RelayTls};

/// One thing wrong, with the setting that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.what)
    }
}

/// Who will read and write the spool and mailboxes: the `user` a root
/// start becomes (with its one group: the privilege drop clears the
/// others), else this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Root starts: what root owns in the spool is handed over to `uid`.
    pub takes_over_root_files: bool,
}

/// Whose start the check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// This process, about to run (`serve`, `queue run`): it becomes
    /// `user` only when it is root.
    ThisProcess,
    /// A start by root (`check-config`, run by an administrator for the
    /// service): `user` when it is set.
    ByRoot,
}

impl Identity {
    /// Who will write the spool: `user` when the start becomes it, else
    /// this process.
    pub fn of(cfg: &Config, start: Start) -> Result<Identity, Problem> {
        let euid = crate::os::euid();
        let becomes = start == Start::ByRoot || euid == 0;
        let Some(user) = cfg.user.as_deref().filter(|_| becomes) else {
            let (name, gid) = passwd_entry(euid);
            return Ok(Identity {
                name,
                uid: euid,
                gid,
                takes_over_root_files: false,
            });
        };
        let (uid, primary) = crate::os::lookup_user(user).ok_or_else(|| Problem {
            setting: "user",
            what: format!("'{user}' is not in /etc/passwd (useradd --system {user})"),
        })?;
        let gid = match cfg.group.as_deref() {
            Some(g) => crate::os::lookup_group(g).ok_or_else(|| Problem {
                setting: "group",
                what: format!("'{g}' is not in /etc/group"),
            })?,
            None => primary,
        };
        Ok(Identity {
            name: user.to_string(),
            uid,
            gid,
            // Started as that user already, nothing is handed over.
            takes_over_root_files: uid != euid,
        })
    }
}

/// The login name and primary group of `uid` (`uid1000` when unnamed).
fn passwd_entry(uid: u32) -> (String, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[2] == uid.to_string())
                .then(|| Some((f[0].to_string(), f[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| (format!("uid{uid}"), uid))
}

/// Every problem `serve` would meet; empty when it can start.
pub fn check(cfg: &Config, start: Start) -> Vec<Problem> {
    let mut out = files(cfg);
    out.extend(directories(cfg, start));
    out
}

/// The spool and mail directories, as the service user will use them.
pub fn directories(cfg: &Config, start: Start) -> Vec<Problem> {
    match Identity::of(cfg, start) {
        Ok(who) => {
            let mut out = directory("spool_dir", &cfg.spool_dir, &who, SPOOL_DIRS);
            out.extend(directory("mail_dir", &cfg.mail_dir, &who, &[]));
            out
        }
        Err(p) => vec![p],
    }
}

/// The spool's sub-directories (checked when they exist already).
const SPOOL_DIRS: &[&str] = &crate::spool::DIRS;

/// The files the settings name.
fn files(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut need = |setting: &'static str, p: &Path| {
        if let Err(e) = std::fs::File::open(p) {
            out.push(Problem {
                setting,
                what: format!("{}: cannot read: {e}", p.display()),
            });
        }
    };
    if let Some(p) = &cfg.auth_users_file {
        need("auth_users_file", p);
    }
    if let Some(p) = &cfg.relayhost_auth_file {
        need("relayhost_auth_file", p);
    }
    if cfg.relayhost_tls == RelayTls::Verify {
        need("tls_ca_file", &cfg.tls_ca_file);
    }
    if let Err(e) = crate::aliases::Aliases::load(&cfg.aliases_file) {
        out.push(Problem {
            setting: "aliases_file",
            what: e,
        });
    }
    out.extend(tls_pair(cfg));
    out.extend(bind_addresses(cfg));
    out
}

/// `smtp_bind_address(6)`: an address of this host (a socket can be
/// bound to it), or every delivery would fail at connect.
fn bind_addresses(cfg: &Config) -> Vec<Problem> {
    let pairs = [
        ("smtp_bind_address", cfg.smtp_bind_address),
        ("smtp_bind_address6", cfg.smtp_bind_address6),
    ];
    pairs
        .into_iter()
        .filter_map(|(setting, ip)| {
            let e = std::net::UdpSocket::bind((ip?, 0)).err()?;
            Some(Problem {
                setting,
                what: format!("cannot send from {}: {e}", ip?),
            })
        })
        .collect()
}

/// `tls_cert` and `tls_key`: readable, PEM, and one the other's key.
fn tls_pair(cfg: &Config) -> Option<Problem> {
    let (cert, key) = (cfg.tls_cert.as_ref()?, cfg.tls_key.as_ref()?);
    for (setting, p) in [("tls_cert", cert), ("tls_key", key)] {
        if let Err(e) = std::fs::File::open(p) {
            return Some(Problem {
                setting,
                what: format!("{}: cannot read: {e}", p.display()),
            });
        }
    }
    #[cfg(feature = "tls")]
    let loaded = crate::tls::server_config(cert, key).map(|_| ());
    #[cfg(not(feature = "tls"))]
    let loaded: Result<(), String> = Err("this satchel was built without the tls feature".into());
    loaded.err().map(|what| Problem {
        setting: "tls_cert",
        what,
    })
}

/// A directory `who` must write: it and the `subdirs` that exist, or the
/// nearest existing parent when it is still to be made.
fn directory(setting: &'static str, dir: &Path, who: &Identity, subdirs: &[&str]) -> Vec<Problem> {
    let refuse = |p: &Path, what: String| Problem {
        setting,
        what: format!("{}: {what}", p.display()),
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => vec![refuse(dir, "not a directory".into())],
        Ok(_) => std::iter::once(dir.to_path_buf())
            .chain(subdirs.iter().map(|s| dir.join(s)))
            .filter(|p| p.is_dir())
            .filter_map(|p| denied(&p, who).map(|w| refuse(&p, w)))
            .collect(),
        Err(_) => {
            // Made by this process, which hands it over when it is root.
            let Some(parent) = nearest_existing(dir) else {
                return vec![refuse(dir, "no parent directory exists".into())];
            };
            if who.takes_over_root_files || crate::os::euid() == 0 {
                return Vec::new();
            }
            let me = Identity {
                takes_over_root_files: false,
                ..who.clone()
            };
            denied(&parent, &me)
                .map(|w| {
                    vec![refuse(
                        &parent,
                        format!("cannot create {}: {w}", dir.display()),
                    )]
                })
                .unwrap_or_default()
        }
    }
}

fn nearest_existing(p: &Path) -> Option<PathBuf> {
    let mut at = p.parent();
    while let Some(a) = at {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        if a.is_dir() {
            return Some(a.to_path_buf());
        }
        at = a.parent();
    }
    None
}

/// Why `who` may not create files in `dir` (write and search), if so:
/// the owner and mode it has, and what it needs.
pub fn denied(dir: &Path, who: &Identity) -> Option<String> {
    let m = std::fs::metadata(dir).ok()?;
    let owner = if who.takes_over_root_files && m.uid() == 0 {
        who.uid
    } else {
        m.uid()
    };
    if may_write(owner, m.gid(), m.mode(), who) {
        return None;
    }
    Some(format!(
        "not writable by {} (uid {}): owned by uid {} gid {} with mode {:04o}; \
         it needs to be owned by {} with mode 0700 or more (chown -R {} {})",
        who.name,
        who.uid,
        m.uid(),
        m.gid(),
        m.mode() & 0o7777,
        who.name,
        who.name,
        dir.display()
    ))
}

/// Write and search permission by the mode bits (root may do anything).
fn may_write(owner: u32, group: u32, mode: u32, who: &Identity) -> bool {
    let bits = if who.uid == 0 {
        return true;
    } else if owner == who.uid {
        mode >> 6
    } else if group == who.gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o3 == 0o3
}

/// A permission error as a line that says where and what to do: the
/// first directory under `top` (or `top` itself) that refuses this
/// process, with its owner and mode; else `err` as it is.
pub fn explain(err: &std::io::Error, setting: &'static str, top: &Path) -> String {
    if err.kind() == std::io::ErrorKind::PermissionDenied {
        let uid = crate::os::euid();
        let (name, gid) = passwd_entry(uid);
        let me = Identity {
            name,
            uid,
            gid,
            takes_over_root_files: false,
        };
        if let Some(p) = directory(setting, top, &me, SPOOL_DIRS).into_iter().next() {
            return p.to_string();
        }
    }
    format!("{setting} {}: {err}", top.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, gid: u32) -> Identity {
        Identity {
            name: "svc".into(),
            uid,
            gid,
            takes_over_root_files: false,
        }
    }

    #[test]
    fn mode_bits_decide_who_may_write() {
        assert!(may_write(5, 5, 0o700, &who(5, 9)));
        assert!(!may_write(5, 5, 0o500, &who(5, 9)));
        assert!(may_write(1, 9, 0o770, &who(5, 9)));
        assert!(!may_write(1, 9, 0o750, &who(5, 9)));
        assert!(may_write(1, 1, 0o1777, &who(5, 9)));
        assert!(!may_write(1, 1, 0o755, &who(5, 9)));
        assert!(may_write(1, 1, 0o000, &who(0, 0)));
    }

    #[test]
    fn a_directory_the_user_cannot_write_is_named_with_owner_and_mode() {
        let d = std::env::temp_dir().join(format!("satchel-preflight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("queue")).unwrap();
        let m = std::fs::metadata(d.join("queue")).unwrap();
        // Someone who is neither the owner nor in the group.
        let other = who(m.uid() + 1, m.gid() + 1);
        std::fs::set_permissions(
            d.join("queue"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let problems = directory("spool_dir", &d, &other, SPOOL_DIRS);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let line = problems[0].to_string();
        assert!(line.starts_with("spool_dir: "), "{line}");
        assert!(line.contains("/queue: not writable by svc"), "{line}");
        assert!(line.contains("mode 0755"), "{line}");
        // Handed over at start by root: root's directories count as the user's.
        let owner = who(m.uid(), m.gid() + 1);
        assert!(directory("spool_dir", &d, &owner, SPOOL_DIRS).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
