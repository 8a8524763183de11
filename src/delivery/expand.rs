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

impl Expanded {
    fn to(addr: ForwardPath) -> Expanded {
        Expanded { addr, via: None }
    }

    /// How `satchel route` and the logs show it.
    pub fn shown(&self) -> String {
        match &self.via {
            None => self.addr.bare(),
            Some(Via::Command(c)) => format!("\"|{c}\""),
            Some(Via::File(f)) => f.clone(),
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
) -> Option<Result<Vec<Expanded>, String>> {
    let ForwardPath::Mailbox(m) = addr else {
        return local_alias(cfg, p, addr);
    };
    let Some(expansion) = p.virtual_aliases.expand(m, &p.delimiter) else {
        return local_alias(cfg, p, addr);
    };
    let home = home_domain(cfg, p, &m.domain);
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
) -> Option<Result<Vec<Expanded>, String>> {
    if !is_local(p, addr) {
        return None;
    }
    let full = mailbox_name(addr);
    let base = p.base_name(&full).to_string();
    let name = [full, base].into_iter().find(|n| p.aliases.contains(n))?;
    Some(
        p.aliases
            .expand(&name)
            .map(|targets| alias_targets(cfg, addr, targets)),
    )
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
