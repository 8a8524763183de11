//! Who is local: the recipient table behind `smtp::session::Policy`, built
//! from the configuration (`local_domains`, `local_users`, /etc/passwd when
//! `@passwd` is listed) and the aliases file. Loaded once at start (and on
//! reload); answering is a hash look-up. Never talks to the network.

use std::collections::{HashMap, HashSet};

use crate::address::{Domain, Mailbox};
use crate::aliases::Aliases;
use crate::config::{passwd_users, Config};
use crate::smtp::session::{Policy, RcptClass};

#[derive(Debug, Clone)]
pub struct LocalPolicy {
    domains: Vec<String>,
    users: HashSet<String>,
    pub aliases: Aliases,
    /// SMTP AUTH: user -> SHA-crypt hash (`$6$…` or `$5$…`).
    credentials: std::collections::HashMap<String, String>,
    /// `relay_domains`, lower case.
    relay_domains: Vec<String>,
    /// `relay_recipients_file`: addresses and `@domain` entries, lower
    /// case; `None` = every address of the relayed domains.
    relay_recipients: Option<HashSet<String>>,
    /// `transport_file`: read with the rest of the policy, so a SIGHUP
    /// installs it only when every table is valid.
    pub transports: crate::config::transport::TransportTable,
    /// `tls_policy_file`: STARTTLS levels per destination domain.
    pub tls_policy: crate::config::transport::TlsPolicy,
    /// `sender_relay_file`.
    pub sender_relays: crate::config::transport::SenderRelays,
    /// `mailbox_command` is set: final delivery by a command.
    pub mailbox_command: bool,
    /// `mailbox_transport`: final delivery by LMTP instead of mail_dir.
    pub mailbox_transport: Option<crate::transport::lmtp::LmtpTarget>,
    /// myorigin, masquerading and the canonical tables.
    pub rewriter: crate::rewrite::Rewriter,
    /// `virtual_alias_file`.
    pub virtual_aliases: crate::config::virtual_alias::VirtualAliases,
    /// `recipient_delimiter`.
    pub delimiter: String,
    /// `sender_login_file`: login -> its addresses and `@domain`s, lower
    /// case; `None` without the file.
    sender_logins: Option<HashMap<String, Vec<String>>>,
    /// `reject_sender_login_mismatch`.
    reject_login_mismatch: bool,
    /// `dkim_keys_file`: the signing keys, read and checked at load.
    #[cfg(feature = "tls")]
    pub dkim: Option<std::sync::Arc<crate::dkim::Signer>>,
}

/// Reads a relay recipient table: one address or `@domain` a line (the
/// first word; `#` comments). `FILE:LINE: what is wrong` for a line that
/// is neither.
pub fn parse_relay_recipients(text: &str, file: &str) -> Result<HashSet<String>, String> {
    let mut set = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let Some(key) = line
            .split_whitespace()
            .next()
            .filter(|k| !k.starts_with('#'))
        else {
            continue;
        };
        let (local, domain) = key.rsplit_once('@').unwrap_or(("", ""));
        if domain.is_empty() || domain.contains('@') || (local.is_empty() && !key.starts_with('@'))
        {
            return Err(format!(
                "{file}:{}: expected user@domain or @domain, found '{key}'",
                n + 1
            ));
        }
        set.insert(key.to_ascii_lowercase());
    }
    Ok(set)
}

/// Reads `LOGIN address, @domain, ...` lines (`#` comments; commas or
/// blanks between the senders). `FILE:LINE: what is wrong` otherwise.
pub fn parse_sender_logins(text: &str, file: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty());
        let login = words.next().unwrap_or_default();
        let senders: Vec<String> = words.map(str::to_ascii_lowercase).collect();
        let bad = senders.iter().find(|s| {
            let (local, domain) = s.rsplit_once('@').unwrap_or(("", ""));
            domain.is_empty() || (local.is_empty() && !s.starts_with('@'))
        });
        match (senders.is_empty(), bad) {
            (true, _) => {
                return Err(format!(
                    "{file}:{}: expected LOGIN address, @domain, ...",
                    n + 1
                ))
            }
            (_, Some(b)) => {
                return Err(format!(
                    "{file}:{}: expected user@domain or @domain, found '{b}'",
                    n + 1
                ))
            }
            _ => map.entry(login.to_string()).or_default().extend(senders),
        }
    }
    Ok(map)
}

/// Reads `user:hash` lines (`#` comments). Only SHA-512/SHA-256 crypt
/// hashes are accepted: `openssl passwd -6` makes them.
pub fn parse_credentials(
    text: &str,
    file: &str,
) -> Result<std::collections::HashMap<String, String>, String> {
    let mut map = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("{file}:{}: expected 'user:$6$salt$hash'", n + 1))?;
        if user.is_empty() || !(hash.starts_with("$6$") || hash.starts_with("$5$")) {
            return Err(format!(
                "{file}:{}: expected 'user:$6$salt$hash' (openssl passwd -6)",
                n + 1
            ));
        }
        map.insert(user.to_string(), hash.to_string());
    }
    Ok(map)
}

/// The rewriting settings and tables of `cfg`.
fn rewriter(cfg: &Config) -> Result<crate::rewrite::Rewriter, String> {
    use crate::rewrite::Canonical;
    let table = |f: &Option<std::path::PathBuf>| match f {
        Some(f) => Canonical::load(f),
        None => Ok(Canonical::default()),
    };
    Ok(crate::rewrite::Rewriter {
        myorigin: cfg.myorigin(),
        local_domains: cfg
            .local_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        masquerade_domains: cfg.masquerade_domains.clone(),
        masquerade_exceptions: cfg.masquerade_exceptions.iter().cloned().collect(),
        sender_canonical: table(&cfg.sender_canonical_file)?,
        recipient_canonical: table(&cfg.recipient_canonical_file)?,
    })
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
        let mut p = LocalPolicy::new(cfg.local_domains.clone(), users, aliases);
        p.relay_domains = cfg
            .relay_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        if let Some(f) = &cfg.transport_file {
            p.transports = crate::config::transport::TransportTable::load(f)?;
        }
        if let Some(f) = &cfg.tls_policy_file {
            p.tls_policy = crate::config::transport::TlsPolicy::load(f)?;
        }
        if let Some(f) = &cfg.sender_relay_file {
            p.sender_relays = crate::config::transport::SenderRelays::load(f)?;
        }
        if let Some(f) = &cfg.relay_recipients_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
            p.relay_recipients = Some(parse_relay_recipients(&text, &f.display().to_string())?);
        }
        if let Some(f) = &cfg.auth_users_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
            p.credentials = parse_credentials(&text, &f.display().to_string())?;
        }
        if let Some(f) = &cfg.sender_login_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
            p.sender_logins = Some(parse_sender_logins(&text, &f.display().to_string())?);
        }
        p.reject_login_mismatch = cfg.reject_sender_login_mismatch;
        if let Some(f) = &cfg.virtual_alias_file {
            p.virtual_aliases = crate::config::virtual_alias::VirtualAliases::load(f)?;
        }
        p.delimiter = cfg.recipient_delimiter.clone();
        p.rewriter = rewriter(cfg)?;
        p.mailbox_transport = cfg.mailbox_transport.clone();
        p.mailbox_command = cfg.mailbox_command.is_some();
        if let Some(f) = &cfg.dkim_keys_file {
            #[cfg(feature = "tls")]
            {
                p.dkim = Some(std::sync::Arc::new(crate::dkim::Signer::load(f)?));
            }
            #[cfg(not(feature = "tls"))]
            return Err(format!(
                "dkim_keys_file {}: DKIM signing needs the tls build feature (ring); this satchel was built without it",
                f.display()
            ));
        }
        Ok(p)
    }

    pub fn new(domains: Vec<String>, users: HashSet<String>, aliases: Aliases) -> LocalPolicy {
        LocalPolicy {
            domains,
            users,
            aliases,
            credentials: Default::default(),
            relay_domains: Vec::new(),
            relay_recipients: None,
            transports: Default::default(),
            tls_policy: Default::default(),
            sender_relays: Default::default(),
            sender_logins: None,
            reject_login_mismatch: false,
            virtual_aliases: Default::default(),
            delimiter: String::new(),
            rewriter: Default::default(),
            mailbox_transport: None,
            mailbox_command: false,
            #[cfg(feature = "tls")]
            dkim: None,
        }
    }

    /// The sizes of the tables loaded, for `check-config`.
    pub fn table_sizes(&self) -> String {
        #[cfg(feature = "tls")]
        let keys = self.dkim.as_ref().map_or(0, |s| s.len());
        #[cfg(not(feature = "tls"))]
        let keys = 0;
        format!(
            "aliases {}, virtual_alias_file {}, sender_canonical_file {}, recipient_canonical_file {}, transport_file {}, tls_policy_file {}, sender_relay_file {}, relay_recipients_file {}, dkim_keys_file {keys}",
            self.aliases.map.len(),
            self.virtual_aliases.len(),
            self.rewriter.sender_canonical.len(),
            self.rewriter.recipient_canonical.len(),
            self.transports.len(),
            self.tls_policy.len(),
            self.sender_relays.len(),
            self.relay_recipients.as_ref().map_or(0, HashSet::len)
        )
    }

    /// A domain this host relays for anyone (`relay_domains`).
    pub fn is_relay_domain(&self, d: &Domain) -> bool {
        self.relay_domains.iter().any(|n| d.is_name(n))
    }

    /// A relayed recipient the relay recipient table knows (or any, when
    /// there is no table).
    fn is_known_relayed(&self, rcpt: &Mailbox) -> bool {
        let Some(known) = &self.relay_recipients else {
            return true;
        };
        let domain = rcpt.domain.to_lowercase();
        let address = format!("{}@{domain}", rcpt.local.to_ascii_lowercase());
        known.contains(&address) || known.contains(&format!("@{domain}"))
    }

    pub fn is_local_domain(&self, d: &Domain) -> bool {
        self.domains.iter().any(|n| d.is_name(n))
    }

    /// A local part names a local user or alias only when it is a plain,
    /// safe name: `../x`, `a/b`, `x%y@z` and quoted tricks never match.
    pub fn is_known_local(&self, local_part: &str) -> bool {
        let name = local_part.to_ascii_lowercase();
        self.is_user(&name) || self.is_user(self.base_name(&name))
    }

    /// Exactly this (lower-case) name is a user, an alias or postmaster.
    pub fn is_user(&self, name: &str) -> bool {
        crate::config::valid_user_name(name)
            && (name == "postmaster" || self.users.contains(name) || self.aliases.contains(name))
    }

    /// A local part without its extension (`recipient_delimiter`).
    pub fn base_name<'a>(&self, local_part: &'a str) -> &'a str {
        crate::config::virtual_alias::strip_extension(local_part, &self.delimiter)
    }
}

impl Policy for LocalPolicy {
    fn may_send_as(&self, login: &str, from: &Mailbox) -> bool {
        let Some(logins) = &self.sender_logins else {
            return true;
        };
        let Some(owned) = logins.get(login) else {
            return !self.reject_login_mismatch;
        };
        let domain = format!("@{}", from.domain.to_lowercase());
        let address = format!("{}{domain}", from.local.to_ascii_lowercase());
        owned.iter().any(|o| *o == address || *o == domain)
    }

    fn authenticate(&self, user: &str, password: &str) -> bool {
        match self.credentials.get(user) {
            Some(h) => crypt_check(password, h),
            None => {
                // Same cost for unknown users: no user enumeration by timing.
                let _ = crypt_check(password, DUMMY_HASH);
                false
            }
        }
    }

    fn classify(&self, rcpt: &Mailbox) -> RcptClass {
        // The address as it will be queued (recipient_canonical_file).
        let canonical;
        let rcpt = if self.rewriter.recipient_canonical.is_empty() {
            rcpt
        } else {
            let new = self.rewriter.recipient(&rcpt.to_string());
            canonical = Mailbox::parse(&new).unwrap_or_else(|_| rcpt.clone());
            &canonical
        };
        if self.virtual_aliases.lookup(rcpt, &self.delimiter).is_some() {
            return RcptClass::LocalKnown;
        }
        let local = self.is_local_domain(&rcpt.domain);
        if !local && self.virtual_aliases.has_domain(&rcpt.domain.to_lowercase()) {
            return RcptClass::VirtualUnknown;
        }
        if !local {
            // Routing asked for inside the local part (`a%b@relayed`,
            // `"a@b"@relayed`, `b!a@relayed`) is relaying to wherever the
            // next host takes it: only for clients that may relay
            // (Postfix's allow_untrusted_routing = no).
            let routed = rcpt.local.contains(['%', '!', '@']);
            return match self.is_relay_domain(&rcpt.domain) {
                false => RcptClass::Remote,
                true if routed => RcptClass::Remote,
                true if self.is_known_relayed(rcpt) => RcptClass::Relayed,
                true => RcptClass::RelayedUnknown,
            };
        }
        if self.is_known_local(&rcpt.local) {
            RcptClass::LocalKnown
        } else {
            RcptClass::LocalUnknown
        }
    }
}

/// Checks `password` against a SHA-crypt hash, `$6$[rounds=N$]SALT$HASH`
/// (SHA-512) or `$5$...` (SHA-256), the formats `openssl passwd -6/-5`
/// and glibc's crypt(3) write. The hashes are compared in constant time.
fn crypt_check(password: &str, hashed: &str) -> bool {
    let mut parts = hashed.split('$');
    let (Some(""), Some(kind)) = (parts.next(), parts.next()) else {
        return false;
    };
    let fields: Vec<&str> = parts.collect();
    let (rounds, salt, hash) = match fields.as_slice() {
        [r, salt, hash] => match r.strip_prefix("rounds=").map(str::parse::<usize>) {
            Some(Ok(n)) => (n, *salt, *hash),
            _ => return false,
        },
        [salt, hash] => (5000, *salt, *hash),
        _ => return false,
    };
    let computed = match kind {
        "6" => sha_crypt::Sha512Params::new(rounds).ok().and_then(|p| {
            sha_crypt::sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &p).ok()
        }),
        "5" => sha_crypt::Sha256Params::new(rounds).ok().and_then(|p| {
            sha_crypt::sha256_crypt_b64(password.as_bytes(), salt.as_bytes(), &p).ok()
        }),
        _ => None,
    };
    let Some(computed) = computed else {
        return false;
    };
    let (a, b) = (computed.as_bytes(), hash.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `openssl passwd -6 -salt abcdefgh secret`: only used to spend the same
/// time on unknown users.
const DUMMY_HASH: &str = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_domains_are_accepted_from_anyone_within_their_recipient_table() {
        let mut p = LocalPolicy::new(vec!["here.test".into()], HashSet::new(), Aliases::default());
        p.relay_domains = vec!["hub.test".into()];
        let m = |a: &str| Mailbox::parse(a).unwrap();
        assert_eq!(p.classify(&m("anyone@HUB.test")), RcptClass::Relayed);
        assert_eq!(p.classify(&m("x@elsewhere.test")), RcptClass::Remote);
        assert_eq!(
            p.classify(&m("x@sub.hub.test")),
            RcptClass::Remote,
            "not subdomains"
        );
        for routed in [
            "x%elsewhere.test@hub.test",
            "\"x@elsewhere.test\"@hub.test",
            "a!x@hub.test",
        ] {
            assert_eq!(p.classify(&m(routed)), RcptClass::Remote, "{routed}");
        }
        p.relay_recipients = Some(
            parse_relay_recipients("# known\nAlice@hub.test OK\n@open.hub.test\n", "r").unwrap(),
        );
        p.relay_domains.push("open.hub.test".into());
        assert_eq!(p.classify(&m("alice@hub.test")), RcptClass::Relayed);
        assert_eq!(p.classify(&m("bob@hub.test")), RcptClass::RelayedUnknown);
        assert_eq!(p.classify(&m("bob@open.hub.test")), RcptClass::Relayed);
        let e = parse_relay_recipients("ok@a.test\nnot-an-address\n", "r.txt").unwrap_err();
        assert_eq!(
            e,
            "r.txt:2: expected user@domain or @domain, found 'not-an-address'"
        );
    }

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

    #[test]
    fn sha_crypt_credentials_authenticate() {
        let mut p = policy();
        p.credentials = parse_credentials(&format!("# users\nalice:{DUMMY_HASH}\n"), "f").unwrap();
        assert!(p.authenticate("alice", "secret"));
        assert!(!p.authenticate("alice", "wrong"));
        assert!(!p.authenticate("bob", "secret"));
        // `openssl passwd -5`, and glibc crypt(3) with explicit rounds.
        assert!(crypt_check(
            "secret",
            "$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM."
        ));
        let rounds = "$6$rounds=6000$abcdefgh$oyRtsHb8OAnkAZfaESHu0fVl8scdV5TPBmm1gOjgdcgxCRNdCMLvSb5UVgN.niT/x2T9GYI76NUALSVAxhlnS.";
        assert!(crypt_check("secret", rounds));
        assert!(!crypt_check("secreT", rounds));
        for bad in [
            "",
            "$6$",
            "$6$x",
            "$7$abc$def",
            "$6$rounds=x$a$b",
            "$6$a$b$c$d",
        ] {
            assert!(!crypt_check("secret", bad), "{bad}");
        }
        assert!(parse_credentials("alice:plaintext\n", "f")
            .unwrap_err()
            .contains("f:1:"));
    }
}
