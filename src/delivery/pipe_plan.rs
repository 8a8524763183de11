//! What to run for a command delivery, and as whom (Postfix's local(8)):
//! a `|command` of the aliases file runs as the file's owner, or as
//! `default_privs` when root owns it; `mailbox_command` runs as the
//! recipient's account (`default_privs` when it has none, or it is root);
//! a `/path/file` target is written by `satchel deliver-file` as the
//! aliases file's owner.
//! When satchel itself is not root, everything runs as the service user.
//! Never as root.

use crate::envelope::{Envelope, RcptState};
use crate::os::Passwd;
use crate::policy::LocalPolicy;
use crate::smtp::reply::Enhanced;
use crate::status::Status;
use crate::transport::local::mailbox_name;
use crate::transport::pipe::Run;

use crate::config::Config;

/// The command, account and environment for recipient `i`.
pub fn plan(cfg: &Config, p: &LocalPolicy, env: &Envelope, i: usize) -> Result<Run, RcptState> {
    let r = &env.rcpts[i];
    let full = mailbox_name(&r.addr);
    let user = p.base_name(&full).to_string();
    let (command, account) = match &r.via {
        Some(via) if !via.from_forward() => (via.target().to_string(), alias_owner(cfg)),
        // ~/.forward targets and mailbox_command: the recipient's own.
        Some(via) => (
            via.target().to_string(),
            crate::os::passwd(|n, uid| n == user && uid != 0),
        ),
        None => (
            cfg.mailbox_command.clone().unwrap_or_default(),
            crate::os::passwd(|n, uid| n == user && uid != 0),
        ),
    };
    let account = match (crate::os::euid(), account) {
        (0, Some(a)) => Some(a),
        (0, None) => Some(default_privs(cfg)?),
        // Not root: as this process, whoever the recipient is.
        _ => None,
    };
    let home = account
        .as_ref()
        .map(|a| a.home.clone())
        .or_else(|| crate::os::passwd(|n, _| n == user).map(|a| a.home))
        .unwrap_or_else(|| "/".into());
    let shell = account
        .as_ref()
        .map_or("/bin/sh".into(), |a| a.shell.clone());
    let (domain, local) = match &r.addr {
        crate::address::ForwardPath::Mailbox(m) => (m.domain.to_string(), m.local_unquoted()),
        crate::address::ForwardPath::Postmaster => (String::new(), "postmaster".into()),
    };
    let extension = local
        .get(user.len() + 1..)
        .filter(|_| local.len() > user.len())
        .unwrap_or("")
        .to_string();
    let sender = match &env.from {
        crate::address::ReversePath::Mailbox(m) => m.to_string(),
        crate::address::ReversePath::Null => String::new(),
    };
    let vars = [
        ("SENDER", sender),
        ("RECIPIENT", r.addr.bare()),
        ("ORIGINAL_RECIPIENT", r.addr.bare()),
        ("USER", user.clone()),
        ("LOGNAME", user.clone()),
        ("HOME", home.clone()),
        ("SHELL", shell),
        ("EXTENSION", extension),
        ("DOMAIN", domain),
        ("LOCAL", local),
        ("PATH", "/usr/bin:/bin".into()),
    ];
    Ok(Run {
        command,
        argv: Vec::new(),
        account: account.map(|a| (a.uid, a.gid)),
        env: vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        home,
    })
}

/// A `/path/file` target: this program's `deliver-file`, which appends
/// the message as an mbox under the mail readers' locks, run as the
/// aliases file's owner (or `default_privs`), or for a `.forward` as its
/// user, as Postfix writes files.
pub fn file(cfg: &Config, p: &LocalPolicy, env: &Envelope, i: usize) -> Result<Run, RcptState> {
    let Some(path) = env.rcpts[i].via.as_ref().map(|v| v.target().to_string()) else {
        return Err(RcptState::Failed(Status::new(
            554,
            Enhanced(5, 3, 0),
            "no file",
        )));
    };
    let mut run = plan(cfg, p, env, i)?;
    let me = std::env::current_exe().map_err(|e| {
        RcptState::Deferred(Status::new(
            451,
            Enhanced(4, 3, 0),
            format!("cannot find this program to write {path}: {e}"),
        ))
    })?;
    run.argv = vec![
        me.display().to_string(),
        "deliver-file".into(),
        path.clone(),
    ];
    Ok(run)
}

/// The owner of the aliases file, unless that is root.
fn alias_owner(cfg: &Config) -> Option<Passwd> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&cfg.aliases_file).ok()?.uid();
    (uid != 0)
        .then(|| crate::os::passwd(|_, u| u == uid))
        .flatten()
}

/// `default_privs`, which must exist and must not be root.
fn default_privs(cfg: &Config) -> Result<Passwd, RcptState> {
    match crate::os::passwd(|n, _| n == cfg.default_privs) {
        Some(a) if a.uid != 0 => Ok(a),
        _ => Err(RcptState::Deferred(Status::new(
            451,
            Enhanced(4, 3, 0),
            format!(
                "default_privs '{}' is not an account other than root",
                cfg.default_privs
            ),
        ))),
    }
}
