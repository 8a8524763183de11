//! Reads `satchel.conf`: `key = value` lines in the style of Postfix's
//! main.cf, `#` comments, lists separated by commas (or white space).
//! Every setting has a default that runs unprivileged from a checkout; an
//! unknown key or a bad value is an error naming `FILE:LINE`.
//!
//! The settings themselves are defined once, in the table of
//! `settings.rs` (name, type, default, limits, SIGHUP behaviour, docs);
//! their value types are in `values.rs`, and `sample.rs` writes
//! etc/satchel.conf from the table. This file owns the rest: finding and
//! reading the file, the checks across settings, the error messages, and
//! the small helpers (durations, sizes, CIDR networks, user names).
//!
//! Also owns the two small tables the policy needs at the edge: the local
//! user list (optionally the accounts of /etc/passwd) and the alias names
//! of the aliases file. Never talks to the network, and never changes
//! what it reads: the parsing is pure.

// The sample etc/satchel.conf is written and checked by a test; the
// documentation it needs is compiled into test builds only.
#[cfg(test)]
mod sample;
mod settings;
pub mod transport;
mod values;
pub mod virtual_alias;

#[cfg(test)]
pub use sample::{man_page, sample_file};
pub use settings::{Config, Reload, Setting, SETTINGS};

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration is looked for when neither `-c` nor
/// `$SATCHEL_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/satchel/satchel.conf";

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub what: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.what)
        } else {
            write!(f, "{}: {}", self.file, self.what)
        }
    }
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let a = a.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How the SMTP client uses STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// Never.
    None,
    /// When offered (RFC 7435); plaintext only when it is not offered.
    Opportunistic,
    /// Always; no certificate check. Defer when not offered.
    Required,
    /// Always, with the certificate checked against the system CA bundle.
    Verify,
}

impl RelayTls {
    pub fn name(self) -> &'static str {
        match self {
            RelayTls::None => "none",
            RelayTls::Opportunistic => "opportunistic",
            RelayTls::Required => "required",
            RelayTls::Verify => "verify",
        }
    }
}

/// The system's host name, as the kernel knows it.
pub fn system_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `10`, `10s`, `5m`, `1h`, `2d`; a bare number is seconds (as in Postfix).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let mult = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * mult).ok()
}

/// `10485760`, `10k`, `10M`, `1G` (binary multiples).
pub fn parse_size(v: &str) -> Option<u64> {
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1u64 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A local user name must be usable as a directory name under `mail_dir`
/// and nothing else: no `/`, no leading `.`, no control characters.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+=".contains(c))
}

impl Config {
    /// Finds and loads the configuration: `-c FILE`, else `$SATCHEL_CONFIG`,
    /// else the system file if it exists, else the built-in defaults.
    pub fn locate(explicit: Option<&str>) -> Result<Config, ConfigError> {
        if let Some(f) = explicit {
            return Config::load(Path::new(f));
        }
        if let Ok(f) = std::env::var("SATCHEL_CONFIG") {
            if !f.is_empty() {
                return Config::load(Path::new(&f));
            }
        }
        if Path::new(SYSTEM_CONFIG).exists() {
            return Config::load(Path::new(SYSTEM_CONFIG));
        }
        Ok(Config::default())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            what: format!("cannot read: {e}"),
        })?;
        // Relative paths in the file are the file's directory's; a file
        // under /etc is an installed satchel's, with the FHS defaults.
        let dir = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let installed = path.starts_with("/etc/");
        let mut c = Config::parse_in(
            &text,
            &path.display().to_string(),
            dir.as_deref(),
            installed,
        )?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, file, None, false)
    }

    /// `parse`, relative paths taken from `base`; `installed`: the FHS
    /// defaults (`fhs_defaults`) for what the text leaves unset.
    fn parse_in(
        text: &str,
        file: &str,
        base: Option<&Path>,
        installed: bool,
    ) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if installed {
            c.fhs_defaults();
        }
        let mut seen = HashSet::new();
        for (n, raw) in text.lines().enumerate() {
            let err = |what: String| ConfigError {
                file: file.to_string(),
                line: n + 1,
                what,
            };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (key, value) = content
                .split_once('=')
                .ok_or_else(|| err(format!("expected 'key = value', found '{content}'")))?;
            let (key, value) = (key.trim(), value.trim());
            if !seen.insert(key.to_string()) {
                return Err(err(format!("'{key}' is set twice")));
            }
            let Some(setting) = SETTINGS.iter().find(|s| s.name() == key) else {
                let hint = did_you_mean(key, known_settings());
                return Err(err(format!("unknown setting '{key}'{hint}")));
            };
            values::with_base(base, || (setting.set)(&mut c, value))
                .map_err(|what| err(format!("bad value for {key}: '{value}' ({what})")))?;
        }
        c.finish(&seen, file)?;
        Ok(c)
    }

    /// An installed satchel's defaults (a configuration file under /etc):
    /// port 25 on the loopback addresses, the spool in /var/spool/satchel,
    /// mbox mailboxes in /var/mail (as Debian's MTAs), /etc/aliases, and
    /// the `satchel` account after binding. What the file sets wins.
    fn fhs_defaults(&mut self) {
        // The local MTA: port 25 on the loopback addresses, as Debian's
        // exim4 is set up; the account drops root after binding.
        self.listen = vec![
            std::net::SocketAddr::from(([127, 0, 0, 1], 25)),
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 25)),
        ];
        self.spool_dir = PathBuf::from("/var/spool/satchel");
        self.mail_dir = PathBuf::from("/var/mail");
        self.mailbox_format = crate::transport::local::MailboxFormat::Mbox;
        self.aliases_file = PathBuf::from("/etc/aliases");
        self.user = Some("satchel".into());
    }

    /// What follows from the settings together, once all are read: the
    /// defaults that depend on others, and the pairs that must agree.
    fn finish(&mut self, seen: &HashSet<String>, file: &str) -> Result<(), ConfigError> {
        let err = |what: String| ConfigError {
            file: file.to_string(),
            line: 0,
            what,
        };
        self.listen_is_default = !seen.contains("listen");
        if !seen.contains("local_domains") {
            self.local_domains = vec!["localhost".into(), self.hostname.to_ascii_lowercase()];
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(err(
                "tls_cert and tls_key go together: set both or neither".into()
            ));
        }
        if !self.smtps_listen.is_empty() && (self.tls_cert.is_none() || !cfg!(feature = "tls")) {
            return Err(err(
                "smtps_listen needs tls_cert and tls_key (and a satchel built with tls)".into(),
            ));
        }
        if self.min_backoff > self.max_backoff {
            return Err(err(format!(
                "min_backoff ({}s) is larger than max_backoff ({}s)",
                self.min_backoff.as_secs(),
                self.max_backoff.as_secs()
            )));
        }
        Ok(())
    }

    /// The effective settings, in the file's own syntax.
    pub fn render(&self) -> String {
        SETTINGS
            .iter()
            .map(|s| format!("{} = {}\n", s.name(), (s.get)(self)))
            .collect()
    }

    /// The settings that differ between `old` and `new` but take effect
    /// only after a restart (a SIGHUP warns about them).
    pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
        SETTINGS
            .iter()
            .filter(|s| s.reload == Reload::Restart && (s.get)(old) != (s.get)(new))
            .map(|s| s.name())
            .collect()
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// `myorigin`, or (unset) the host name when it is a local domain,
    /// else the first local domain.
    pub fn myorigin(&self) -> String {
        if let Some(o) = &self.myorigin {
            return o.to_ascii_lowercase();
        }
        crate::sendmail::origin(&self.hostname, &self.local_domains)
    }

    pub fn may_relay(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|n| n.contains(ip))
    }
}

/// The names of every setting (the rows of the table).
fn known_settings() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().map(|s| s.name())
}

/// ` (did you mean 'hostname'?)` when one of `known` is a likely typo of
/// `word` (two edits, or a third of its letters for long words), else
/// nothing.
pub fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> String {
    let limit = (word.chars().count() / 3).clamp(2, 3);
    known
        .map(|k| (edit_distance(word, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, with a swap of two neighbours counted as one
/// edit (`hostnmae` is one slip from `hostname`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![(0..=b.len()).collect::<Vec<usize>>(); a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// The accounts of /etc/passwd that can receive mail (valid names only).
pub fn passwd_users(passwd: &str) -> impl Iterator<Item = String> + '_ {
    passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|u| valid_user_name(u))
        .map(|u| u.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn defaults_run_from_a_checkout() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.listen[0], "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.spool_dir, PathBuf::from("./var/spool"));
        assert!(c.is_local_domain("localhost"));
        assert!(c.is_local_domain(&c.hostname.clone()));
        assert_eq!(c.message_size_limit, 10 * 1024 * 1024);
        assert_eq!(c.max_recipients, 100);
        assert_eq!(c.max_connections, 100);
        assert_eq!(c.command_timeout, Duration::from_secs(300));
    }

    #[test]
    fn settings_parse_with_comments_and_lists() {
        let c = Config::parse(
            "# comment\nlisten = 127.0.0.1:25, [::1]:25\nhostname = mx.example\n\
             local_users = alice bob\nrelay_networks = 10.0.0.0/8, ::1\nmessage_size_limit = 1M\n\
             command_timeout = 5m\nvrfy = yes\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.local_domains, vec!["localhost", "mx.example"]);
        assert_eq!(c.local_users, vec!["alice", "bob"]);
        assert!(c.may_relay("10.1.2.3".parse().unwrap()));
        assert!(c.may_relay("::1".parse().unwrap()));
        assert!(!c.may_relay("11.0.0.1".parse().unwrap()));
        assert_eq!(c.message_size_limit, 1 << 20);
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert!(c.vrfy);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = Config::parse("hostname = a\n\nfrobnicate = 1\n", "etc/x.conf").unwrap_err();
        assert_eq!(e.to_string(), "etc/x.conf:3: unknown setting 'frobnicate'");
    }

    #[test]
    fn an_unknown_setting_suggests_the_closest_known_one() {
        let e = Config::parse("hostnmae = a\n", "x.conf").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.conf:1: unknown setting 'hostnmae' (did you mean 'hostname'?)"
        );
        let e = Config::parse("relayhots = [a]:25\n", "x.conf").unwrap_err();
        assert!(
            e.to_string().ends_with("(did you mean 'relayhost'?)"),
            "{e}"
        );
        let e = Config::parse("mesage_size_limit = 1\n", "x.conf").unwrap_err();
        assert!(e.to_string().contains("'message_size_limit'"), "{e}");
        assert_eq!(
            did_you_mean("sever", ["serve", "inetd"].into_iter()),
            " (did you mean 'serve'?)"
        );
        assert_eq!(did_you_mean("zz", ["serve"].into_iter()), "");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "listen = nowhere",
            "max_connections = 0",
            "max_connections = many",
            "message_size_limit = 12Q",
            "relay_networks = 10.0.0.0/33",
            "command_timeout = soon",
            "vrfy = maybe",
            "local_users = ../etc",
            "log_level = loud",
            "command_timeout = 0",
            "connect_timeout = 0s",
            "queue_run_interval = 0",
            "relay_timeout = 99999999999999999999999d",
            "min_backoff = 2h",
            "hostname",
        ] {
            assert!(Config::parse(bad, "x").is_err(), "{bad}");
        }
        assert!(
            Config::parse("vrfy = yes\nvrfy = no\n", "x").is_err(),
            "duplicates"
        );
    }

    #[test]
    fn render_parses_back_to_the_same_settings() {
        let c = Config::parse("hostname = mx.example\ngreet_pause = 500ms\n", "x").unwrap();
        let again = Config::parse(&c.render(), "x").unwrap();
        assert_eq!(again.render(), c.render());
    }

    #[test]
    fn cidr_matching_includes_v4_mapped_v6() {
        let n = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.9.9.9".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn user_names_cannot_escape_the_mail_directory() {
        for bad in ["../x", "a/b", ".hidden", "", "a\0b", "a b"] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
        assert!(valid_user_name("alice.smith-2"));
    }

    #[test]
    fn etc_satchel_conf_is_the_generated_sample() {
        let want = sample_file();
        if std::env::var("SATCHEL_WRITE_SAMPLE").as_deref() == Ok("1") {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/satchel.conf");
            fs::write(path, &want).expect("write etc/satchel.conf");
            return;
        }
        let have = include_str!("../../etc/satchel.conf");
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(h, w)| h != w)
                .map_or(have.lines().count().min(want.lines().count()), |i| i);
            panic!(
                "etc/satchel.conf differs from config::sample_file() at line {}: \
                 the settings table is its source. Regenerate it with \
                 SATCHEL_WRITE_SAMPLE=1 cargo test --lib etc_satchel_conf",
                line + 1
            );
        }
    }

    #[test]
    fn etc_man_satchel_conf_5_is_the_generated_page() {
        // The date of the page is the version's, not the day's: the file
        // stays the same until the table changes.
        let want = man_page("2026-12-03");
        if std::env::var("SATCHEL_WRITE_SAMPLE").as_deref() == Ok("1") {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/man/satchel.conf.5");
            fs::write(path, &want).expect("write etc/man/satchel.conf.5");
            return;
        }
        let have = include_str!("../../etc/man/satchel.conf.5");
        assert!(
            have == want,
            "etc/man/satchel.conf.5 differs from config::man_page(): regenerate it with \
             SATCHEL_WRITE_SAMPLE=1 cargo test --lib etc_man"
        );
    }

    #[test]
    fn every_default_parses_and_renders_as_documented() {
        let c = Config::default();
        for s in SETTINGS {
            let rendered = (s.get)(&c);
            if !s.default().contains('<') {
                let mut again = Config::default();
                assert_eq!((s.set)(&mut again, s.default()), Ok(()), "{}", s.name());
                assert_eq!((s.get)(&again), rendered, "{}", s.name());
            }
        }
        assert_eq!(SETTINGS.len(), c.render().lines().count());
    }

    #[test]
    fn relative_paths_are_the_config_files_and_installed_files_get_fhs_defaults() {
        let dir = std::env::temp_dir().join(format!("satchel-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("satchel.conf");
        std::fs::write(&file, "spool_dir = spool\naliases_file = /etc/aliases\n").unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.spool_dir, dir.join("spool"));
        assert_eq!(c.aliases_file, PathBuf::from("/etc/aliases"));
        // Unset: today's defaults, relative to the working directory.
        assert_eq!(c.mail_dir, PathBuf::from("./var/mail"));
        assert_eq!(c.user, None);
        // An installed file (under /etc): FHS defaults, what is set wins.
        let fhs = Config::parse_in(
            "mail_dir = /srv/mail\n",
            "/etc/satchel/satchel.conf",
            None,
            true,
        )
        .unwrap();
        assert_eq!(fhs.spool_dir, PathBuf::from("/var/spool/satchel"));
        assert_eq!(fhs.mail_dir, PathBuf::from("/srv/mail"));
        assert_eq!(fhs.aliases_file, PathBuf::from("/etc/aliases"));
        assert_eq!(
            fhs.mailbox_format,
            crate::transport::local::MailboxFormat::Mbox
        );
        assert_eq!(fhs.user.as_deref(), Some("satchel"));
        assert_eq!(fhs.listen[0].to_string(), "127.0.0.1:25");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_restart_settings_are_reported_after_a_reload() {
        let old = Config::parse("", "x").unwrap();
        let new = Config::parse(
            "listen = 127.0.0.1:25\nlog_level = debug\nhostname = mx.example\nuser = mail\n",
            "x",
        )
        .unwrap();
        assert_eq!(
            Config::needs_restart(&old, &new),
            vec!["listen", "log_level", "user"]
        );
        assert!(Config::needs_restart(&old, &old.clone()).is_empty());
        let restart: Vec<&str> = SETTINGS
            .iter()
            .filter(|s| s.reload == Reload::Restart)
            .map(|s| s.name())
            .collect();
        assert_eq!(
            restart,
            [
                "listen",
                "max_connections",
                "log_level",
                "spool_dir",
                "metrics_file",
                "metrics_interval",
                "user",
                "group",
                "delivery_threads",
                "submission_listen",
                "smtps_listen"
            ]
        );
    }
}
