//! Expansion: what a recipient address stands for, through the virtual
//! alias table (per domain) and the aliases file (local domains), with
//! `recipient_delimiter` extensions. Pure look-ups in the loaded tables;
//! the delivery attempt records the result, `satchel route` shows it.

use crate::address::{Domain, ForwardPath, Mailbox};
use crate::aliases::Target;
use crate::envelope::Via;

/// One target of an expansion: an address, or a command or file on
/// behalf of the address expanded (`via`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub addr: ForwardPath,
    pub via: Option<Via>,
}

/// Why an address could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// For good (a loop): bounced.
    Fail(String),
    /// For now (a `.forward` that cannot be read or parsed): kept.
    Defer(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Fail(w) | Refused::Defer(w) => f.write_str(w),
        }
    }
}

impl Expanded {
    fn to(addr: ForwardPath) -> Expanded {
        Expanded { addr, via: None }
    }

    /// How `satchel route` and the logs show it.
    pub fn shown(&self) -> String {
        match &self.via {
            None => self.addr.bare(),
            Some(v) if v.is_command() => format!("\"|{}\"", v.target()),
            Some(v) => v.target().to_string(),
        }
    }
}
use crate::config::Config;
use crate::policy::LocalPolicy;
use crate::transport::local::mailbox_name;

/// A recipient here: `<postmaster>` or an address in a local domain.
fn is_local(p: &LocalPolicy, addr: &ForwardPath) -> bool {
    match addr {
        ForwardPath::Postmaster => true,
        ForwardPath::Mailbox(m) => p.is_local_domain(&m.domain),
    }
}

/// What an address stands for: its virtual alias targets (a local one
/// through the aliases too); else, in a local domain, its alias expansion
/// (the whole name first, then without its extension). `None` for a
/// mailbox or a remote address.
pub fn targets_of(
    cfg: &Config,
    p: &LocalPolicy,
    addr: &ForwardPath,
) -> Option<Result<Vec<Expanded>, Refused>> {
    let ForwardPath::Mailbox(m) = addr else {
        return local_alias(cfg, p, addr);
    };
    let Some(expansion) = p.virtual_aliases.expand(m, &p.delimiter) else {
        return local_alias(cfg, p, addr).or_else(|| forward(p, m));
    };
    let home = home_domain(cfg, p, &m.domain);
    let expansion = expansion.map_err(Refused::Fail);
    Some(expansion.and_then(|targets| {
        let mut out: Vec<Expanded> = Vec::new();
        for t in targets {
            let a = ForwardPath::Mailbox(match t {
                Target::Local(user) => Mailbox {
                    local: user,
                    domain: home.clone(),
                },
                Target::Remote(m) => m,
                // virtual(5) targets are addresses only.
                Target::Command(_) | Target::File(_) => continue,
            });
            let more = match local_alias(cfg, p, &a) {
                Some(r) => r?,
                None => vec![Expanded::to(a)],
            };
            for a in more {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }))
}

/// The alias expansion of a local address, if it names an alias.
fn local_alias(
    cfg: &Config,
    p: &LocalPolicy,
    addr: &ForwardPath,
) -> Option<Result<Vec<Expanded>, Refused>> {
    if !is_local(p, addr) {
        return None;
    }
    let full = mailbox_name(addr);
    let base = p.base_name(&full).to_string();
    let name = [full, base].into_iter().find(|n| p.aliases.contains(n))?;
    Some(
        p.aliases
            .expand(&name)
            .map(|targets| alias_targets(cfg, addr, targets))
            .map_err(Refused::Fail),
    )
}

/// The `~/.forward` of a local recipient who is a passwd user, as
/// Postfix's local(8) reads it: addresses, `|command`, `/file` and
/// `\user` (this user's mailbox, not forwarded again), commas or lines
/// between them, `#` comments. A file its owner does not control alone
/// (another owner, group- or world-writable, in a home that is not its
/// owner's) is ignored with a log line; one that cannot be read or
/// parsed defers the recipient.
fn forward(p: &LocalPolicy, m: &Mailbox) -> Option<Result<Vec<Expanded>, Refused>> {
    if !p.is_local_domain(&m.domain) {
        return None;
    }
    let full = m.local_unquoted().to_ascii_lowercase();
    let user = p.base_name(&full).to_string();
    if !p.is_user(&user) || p.aliases.contains(&user) {
        return None;
    }
    let account = crate::os::passwd(|n, _| n == user)?;
    let path = std::path::Path::new(&account.home).join(".forward");
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if let Some(why) = untrusted_forward(&meta, &account) {
        log::warn!("warning: {}: ignored: {why}", path.display());
        return None;
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Some(Err(Refused::Defer(format!(
                "{}: cannot read: {e}",
                path.display()
            ))))
        }
    };
    let me = ForwardPath::Mailbox(Mailbox {
        local: user.clone(),
        domain: m.domain.clone(),
    });
    Some(
        forward_targets(&text, &me, m)
            .map_err(|e| Refused::Defer(format!("{}: {e}", path.display()))),
    )
}

/// What is wrong with a `.forward` for its owner, if anything.
fn untrusted_forward(meta: &std::fs::Metadata, owner: &crate::os::Passwd) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Some("not a regular file".into());
    }
    if meta.uid() != owner.uid && meta.uid() != 0 {
        return Some(format!(
            "owned by uid {}, not by {}",
            meta.uid(),
            owner.name
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by others (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    let home = std::fs::metadata(&owner.home).ok()?;
    if home.uid() != owner.uid && home.uid() != 0 {
        return Some(format!(
            "in {}, which {} does not own",
            owner.home, owner.name
        ));
    }
    if home.mode() & 0o002 != 0 {
        return Some(format!("in {}, which anyone may write", owner.home));
    }
    None
}

/// The targets of a `.forward` text for `me` (the user's own address;
/// `rcpt` as it was addressed).
fn forward_targets(text: &str, me: &ForwardPath, rcpt: &Mailbox) -> Result<Vec<Expanded>, String> {
    let mut out: Vec<Expanded> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        for t in crate::aliases::split_targets(line).map_err(at)? {
            let own = t.strip_prefix('\\').unwrap_or(&t).to_string();
            crate::aliases::check_target(&own).map_err(at)?;
            let e = if let Some(cmd) = own.strip_prefix('|') {
                Expanded {
                    addr: me.clone(),
                    via: Some(Via::ForwardCommand(cmd.trim().to_string())),
                }
            } else if own.starts_with('/') {
                Expanded {
                    addr: me.clone(),
                    via: Some(Via::ForwardFile(own)),
                }
            } else if own.contains('@') {
                let mb =
                    Mailbox::parse(&own).map_err(|x| at(format!("bad address '{own}': {x}")))?;
                Expanded::to(ForwardPath::Mailbox(mb))
            } else {
                // A user name: one of this domain's (`\user`, or the
                // user itself, is the mailbox).
                Expanded::to(ForwardPath::Mailbox(Mailbox {
                    local: own.to_ascii_lowercase(),
                    domain: rcpt.domain.clone(),
                }))
            };
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    if out.is_empty() {
        return Err("no target".into());
    }
    Ok(out)
}

/// Where a virtual alias's bare targets live: the alias's own domain when
/// it is local, else this host's name (or the first local domain).
fn home_domain(cfg: &Config, p: &LocalPolicy, alias_domain: &Domain) -> Domain {
    if p.is_local_domain(alias_domain) {
        return alias_domain.clone();
    }
    let host = Domain::Name(cfg.hostname.to_ascii_lowercase());
    if p.is_local_domain(&host) {
        return host;
    }
    Domain::Name(
        cfg.local_domains
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into()),
    )
}

/// An alias's targets: local users in the alias's own domain, addresses,
/// and commands and files on behalf of the alias.
fn alias_targets(cfg: &Config, alias: &ForwardPath, targets: Vec<Target>) -> Vec<Expanded> {
    let domain = match alias {
        ForwardPath::Mailbox(m) => m.domain.clone(),
        ForwardPath::Postmaster => Domain::Name(
            cfg.local_domains
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into()),
        ),
    };
    targets
        .into_iter()
        .map(|t| match t {
            Target::Local(user) => Expanded::to(ForwardPath::Mailbox(Mailbox {
                local: user,
                domain: domain.clone(),
            })),
            Target::Remote(m) => Expanded::to(ForwardPath::Mailbox(m)),
            Target::Command(c) => Expanded {
                addr: alias.clone(),
                via: Some(Via::Command(c)),
            },
            Target::File(f) => Expanded {
                addr: alias.clone(),
                via: Some(Via::File(f)),
            },
        })
        .collect()
}
