//! Who is local: the recipient table behind `smtp::session::Policy`, built
//! from the configuration (`local_domains`, `local_users`, /etc/passwd when
//! `@passwd` is listed) and the aliases file. Loaded once at start (and on
//! reload); answering is a hash look-up. Never talks to the network.

use std::collections::HashSet;

use crate::address::{Domain, Mailbox};
use crate::aliases::Aliases;
use crate::config::{passwd_users, Config};
use crate::smtp::session::{Policy, RcptClass};

#[derive(Debug, Clone)]
pub struct LocalPolicy {
    domains: Vec<String>,
    users: HashSet<String>,
    pub aliases: Aliases,
}

impl LocalPolicy {
    /// Builds the table; fails with a readable line when the aliases file is broken.
    pub fn load(cfg: &Config) -> Result<LocalPolicy, String> {
        let aliases = Aliases::load(&cfg.aliases_file)?;
        let mut users = HashSet::new();
        for u in &cfg.local_users {
            if u == "@passwd" {
                if let Ok(p) = std::fs::read_to_string("/etc/passwd") {
                    users.extend(passwd_users(&p));
                }
            } else {
                users.insert(u.clone());
            }
        }
        Ok(LocalPolicy::new(cfg.local_domains.clone(), users, aliases))
    }

    pub fn new(domains: Vec<String>, users: HashSet<String>, aliases: Aliases) -> LocalPolicy {
        LocalPolicy {
            domains,
            users,
            aliases,
        }
    }

    pub fn is_local_domain(&self, d: &Domain) -> bool {
        self.domains.iter().any(|n| d.is_name(n))
    }

    /// A local part names a local user or alias only when it is a plain,
    /// safe name: `../x`, `a/b`, `x%y@z` and quoted tricks never match.
    pub fn is_known_local(&self, local_part: &str) -> bool {
        let name = local_part.to_ascii_lowercase();
        crate::config::valid_user_name(&name)
            && (name == "postmaster" || self.users.contains(&name) || self.aliases.contains(&name))
    }
}

impl Policy for LocalPolicy {
    fn classify(&self, rcpt: &Mailbox) -> RcptClass {
        if !self.is_local_domain(&rcpt.domain) {
            return RcptClass::Remote;
        }
        if self.is_known_local(&rcpt.local) {
            RcptClass::LocalKnown
        } else {
            RcptClass::LocalUnknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LocalPolicy {
        let aliases = Aliases::parse("staff: alice\n").unwrap();
        LocalPolicy::new(
            vec!["local.test".into()],
            ["alice".to_string()].into(),
            aliases,
        )
    }

    fn class(s: &str) -> RcptClass {
        policy().classify(&Mailbox::parse(s).unwrap())
    }

    #[test]
    fn users_aliases_and_postmaster_are_local() {
        assert_eq!(class("alice@local.test"), RcptClass::LocalKnown);
        assert_eq!(class("ALICE@LOCAL.TEST"), RcptClass::LocalKnown);
        assert_eq!(class("staff@local.test"), RcptClass::LocalKnown);
        assert_eq!(class("postmaster@local.test"), RcptClass::LocalKnown);
        assert_eq!(class("carol@local.test"), RcptClass::LocalUnknown);
        assert_eq!(class("alice@remote.test"), RcptClass::Remote);
    }

    #[test]
    fn path_tricks_are_never_local_users() {
        for s in [
            "\"../alice\"@local.test",
            "\"a/b\"@local.test",
            "alice%remote.test@local.test",
            "\"alice@remote.test\"@local.test",
        ] {
            assert_eq!(class(s), RcptClass::LocalUnknown, "{s}");
        }
    }
}
