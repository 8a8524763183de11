//! The value types of satchel.conf: one small parser per kind of value
//! (a count with a minimum, a time that may or may not be zero, a path, a
//! list of addresses, ...), each able to render its value back in the
//! file's own syntax. A row of the settings table names one of these.
//!
//! Pure: never reads a file or touches the network. An error is the text
//! in parentheses of `bad value for KEY: 'VALUE' (what)`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{parse_duration, parse_size, valid_user_name, Cidr};

/// How one kind of value is read from and written to satchel.conf.
pub trait Kind {
    type Value;
    /// The value of `text` (already trimmed), or what is wrong with it.
    fn parse(&self, text: &str) -> Result<Self::Value, String>;
    /// `value` in the syntax `parse` reads back.
    fn render(&self, value: &Self::Value) -> String;
}

/// A whole number of at least `min`.
pub struct Count {
    pub min: usize,
}

impl Kind for Count {
    type Value = usize;
    fn parse(&self, text: &str) -> Result<usize, String> {
        text.parse::<usize>()
            .ok()
            .filter(|&n| n >= self.min)
            .ok_or_else(|| format!("expected a whole number >= {}", self.min))
    }
    fn render(&self, value: &usize) -> String {
        value.to_string()
    }
}

/// A whole number, 0 or more, that fits 32 bits.
pub struct Count32;

impl Kind for Count32 {
    type Value = u32;
    fn parse(&self, text: &str) -> Result<u32, String> {
        text.parse::<u32>()
            .map_err(|_| "expected a whole number".to_string())
    }
    fn render(&self, value: &u32) -> String {
        value.to_string()
    }
}

/// A TCP port, 1 to 65535.
pub struct Port;

impl Kind for Port {
    type Value = u16;
    fn parse(&self, text: &str) -> Result<u16, String> {
        text.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| "expected a port number".to_string())
    }
    fn render(&self, value: &u16) -> String {
        value.to_string()
    }
}

/// A size in octets (`10485760`, `10k`, `10M`, `1G`) of at least `min`.
pub struct Size {
    pub min: u64,
}

impl Kind for Size {
    type Value = u64;
    fn parse(&self, text: &str) -> Result<u64, String> {
        parse_size(text).filter(|&n| n >= self.min).ok_or_else(|| {
            let min = self.min;
            format!("expected a size of at least {min}, such as 10485760 or 10M")
        })
    }
    fn render(&self, value: &u64) -> String {
        value.to_string()
    }
}

/// A time such as `300s`, `5m` or `1h`. Most times must not be zero: a
/// zero network time-out fails every connection, a zero interval spins.
pub struct Time {
    pub may_be_zero: bool,
}

impl Kind for Time {
    type Value = Duration;
    fn parse(&self, text: &str) -> Result<Duration, String> {
        let d = parse_duration(text).ok_or("expected a time such as 300s, 5m or 1h")?;
        if d.is_zero() && !self.may_be_zero {
            return Err("must not be 0".into());
        }
        Ok(d)
    }
    fn render(&self, value: &Duration) -> String {
        if value.subsec_millis() == 0 {
            format!("{}s", value.as_secs())
        } else {
            format!("{}ms", value.as_millis())
        }
    }
}

/// yes/no, true/false, on/off, 1/0.
pub struct YesNo;

impl Kind for YesNo {
    type Value = bool;
    fn parse(&self, text: &str) -> Result<bool, String> {
        match text.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" | "1" => Ok(true),
            "no" | "false" | "off" | "0" => Ok(false),
            _ => Err("expected yes or no".into()),
        }
    }
    fn render(&self, value: &bool) -> String {
        if *value { "yes" } else { "no" }.into()
    }
}

/// A path that must be given.
pub struct FilePath;

thread_local! {
    /// The directory of the configuration file being read: relative paths
    /// written in it are taken from there (`Config::load`).
    static BASE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with relative paths taken from `dir`.
pub fn with_base<T>(dir: Option<&std::path::Path>, f: impl FnOnce() -> T) -> T {
    BASE.with(|b| *b.borrow_mut() = dir.map(PathBuf::from));
    let out = f();
    BASE.with(|b| *b.borrow_mut() = None);
    out
}

impl Kind for FilePath {
    type Value = PathBuf;
    fn parse(&self, text: &str) -> Result<PathBuf, String> {
        if text.is_empty() {
            return Err("expected a path".into());
        }
        let p = PathBuf::from(text);
        Ok(match BASE.with(|b| b.borrow().clone()) {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        })
    }
    /// Absolute, as `check-config` shows the paths in force.
    fn render(&self, value: &PathBuf) -> String {
        std::path::absolute(value)
            .unwrap_or_else(|_| value.clone())
            .display()
            .to_string()
    }
}

/// Letters, digits, `.` and `-`.
pub struct HostName;

impl Kind for HostName {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
        if text.is_empty() || !text.chars().all(ok) {
            return Err("expected a host name".into());
        }
        Ok(text.to_string())
    }
    fn render(&self, value: &String) -> String {
        value.clone()
    }
}

/// A user or group name to run as (see `valid_user_name`).
pub struct Account;

impl Kind for Account {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        if !valid_user_name(text) {
            return Err("expected an account name".into());
        }
        Ok(text.to_string())
    }
    fn render(&self, value: &String) -> String {
        value.clone()
    }
}

/// `relayhost`: `[host]:port`, `host:port` or `host` (port 25).
pub struct HostPort;

impl Kind for HostPort {
    type Value = crate::transport::smtp::Relayhost;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        crate::transport::smtp::Relayhost::parse(text, 25)
            .ok_or_else(|| "expected [host]:port, host:port or host".into())
    }
    fn render(&self, value: &Self::Value) -> String {
        value.to_string()
    }
}

/// Empty = not set; anything else is a value of the inner kind.
pub struct Optional<K>(pub K);

impl<K: Kind> Kind for Optional<K> {
    type Value = Option<K::Value>;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        if text.is_empty() {
            return Ok(None);
        }
        self.0.parse(text).map(Some)
    }
    fn render(&self, value: &Self::Value) -> String {
        value.as_ref().map(|v| self.0.render(v)).unwrap_or_default()
    }
}

/// One word of a fixed set, e.g. `maildir` or `mbox`.
pub struct Choice<T: 'static> {
    pub names: &'static [(&'static str, T)],
    /// `INFO` as well as `info`.
    pub any_case: bool,
}

impl<T: Copy + PartialEq> Kind for Choice<T> {
    type Value = T;
    fn parse(&self, text: &str) -> Result<T, String> {
        let same = |name: &str| match self.any_case {
            true => name.eq_ignore_ascii_case(text),
            false => name == text,
        };
        if let Some(&(_, value)) = self.names.iter().find(|(name, _)| same(name)) {
            return Ok(value);
        }
        let names: Vec<&str> = self.names.iter().map(|&(name, _)| name).collect();
        Err(match names.split_last() {
            Some((last, [])) => format!("expected {last}"),
            Some((last, rest)) => format!("expected {} or {last}", rest.join(", ")),
            None => "expected nothing".into(),
        })
    }
    fn render(&self, value: &T) -> String {
        let name = self.names.iter().find(|(_, v)| v == value);
        name.map(|&(name, _)| name.to_string()).unwrap_or_default()
    }
}

/// Items separated by commas or white space. With `empty` set, an empty
/// list is an error saying so.
pub struct List<K> {
    pub item: K,
    pub empty: Option<&'static str>,
}

impl<K> List<K> {
    /// A list of `item`s, possibly empty.
    pub fn of(item: K) -> List<K> {
        List { item, empty: None }
    }

    /// The same list, refused when empty with `what`.
    pub fn not_empty(self, what: &'static str) -> List<K> {
        List {
            empty: Some(what),
            ..self
        }
    }
}

impl<K: Kind> Kind for List<K> {
    type Value = Vec<K::Value>;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        let words = text.split(|c: char| c == ',' || c.is_whitespace());
        let items = words
            .filter(|w| !w.is_empty())
            .map(|w| self.item.parse(w))
            .collect::<Result<Vec<_>, _>>()?;
        match self.empty {
            Some(what) if items.is_empty() => Err(what.into()),
            _ => Ok(items),
        }
    }
    fn render(&self, value: &Self::Value) -> String {
        let items: Vec<String> = value.iter().map(|v| self.item.render(v)).collect();
        items.join(", ")
    }
}

/// A list item: `ADDRESS:PORT` or `[IPv6]:PORT`.
pub struct SocketAddress;

impl Kind for SocketAddress {
    type Value = SocketAddr;
    fn parse(&self, text: &str) -> Result<SocketAddr, String> {
        text.parse()
            .map_err(|_| format!("'{text}' is not ADDRESS:PORT or [IPv6]:PORT"))
    }
    fn render(&self, value: &SocketAddr) -> String {
        value.to_string()
    }
}

/// A list item: a nameserver, `ADDRESS` (port 53) or `ADDRESS:PORT`.
pub struct Nameserver;

impl Kind for Nameserver {
    type Value = SocketAddr;
    fn parse(&self, text: &str) -> Result<SocketAddr, String> {
        text.parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("'{text}' is not an address or ADDRESS:PORT"))
    }
    fn render(&self, value: &SocketAddr) -> String {
        value.to_string()
    }
}

/// An IPv4 address (`v6: false`) or an IPv6 address (`v6: true`).
pub struct IpAddress {
    pub v6: bool,
}

impl Kind for IpAddress {
    type Value = IpAddr;
    fn parse(&self, text: &str) -> Result<IpAddr, String> {
        match text.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() == self.v6 => Ok(ip),
            _ if self.v6 => Err("expected an IPv6 address".into()),
            _ => Err("expected an IPv4 address".into()),
        }
    }
    fn render(&self, value: &IpAddr) -> String {
        value.to_string()
    }
}

/// Characters that start an address extension (`+`, `+-`): punctuation
/// other than `@`, `"`, `\\` and `.`, or nothing.
pub struct Delimiters;

impl Kind for Delimiters {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        let ok = |c: char| c.is_ascii_punctuation() && !matches!(c, '@' | '"' | '\\' | '.');
        if text.chars().all(ok) && text.len() <= 8 {
            Ok(text.to_string())
        } else {
            Err("expected delimiter characters such as + or +-".into())
        }
    }
    fn render(&self, value: &String) -> String {
        value.clone()
    }
}

/// An LMTP next hop: `lmtp:unix:/path` or `lmtp:[host]:port`.
pub struct LmtpNextHop;

impl Kind for LmtpNextHop {
    type Value = crate::transport::lmtp::LmtpTarget;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        let rest = text
            .strip_prefix("lmtp:")
            .ok_or("expected lmtp:unix:/path or lmtp:[host]:port")?;
        crate::transport::lmtp::LmtpTarget::parse(rest)
    }
    fn render(&self, value: &Self::Value) -> String {
        value.to_string()
    }
}

/// Free text, such as a command line.
pub struct Text;

impl Kind for Text {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        Ok(text.to_string())
    }
    fn render(&self, value: &String) -> String {
        value.clone()
    }
}

/// A list item: an address or a CIDR network.
pub struct Network;

impl Kind for Network {
    type Value = Cidr;
    fn parse(&self, text: &str) -> Result<Cidr, String> {
        Cidr::parse(text).ok_or_else(|| format!("'{text}' is not an address or network"))
    }
    fn render(&self, value: &Cidr) -> String {
        value.to_string()
    }
}

/// A list item: a DNS blocklist zone, with its reply filter if any.
pub struct DnsblZone;

impl Kind for DnsblZone {
    type Value = crate::guard::dnsbl::Zone;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        crate::guard::dnsbl::Zone::parse(text)
    }
    fn render(&self, value: &Self::Value) -> String {
        value.to_string()
    }
}

/// A list item: `inet:host:port` or `unix:/path`.
pub struct MilterTarget;

impl Kind for MilterTarget {
    type Value = crate::guard::milter::Target;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        crate::guard::milter::Target::parse(text)
    }
    fn render(&self, value: &Self::Value) -> String {
        value.to_string()
    }
}

/// `hold`, or a header field (`Name: value`) to add.
pub struct QuarantineAction;

impl Kind for QuarantineAction {
    type Value = crate::guard::Quarantine;
    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        crate::guard::Quarantine::parse(text)
    }
    fn render(&self, value: &Self::Value) -> String {
        value.to_string()
    }
}

/// A list item: a mail domain, kept in lower case.
pub struct Domain;

impl Kind for Domain {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        Ok(text.to_ascii_lowercase())
    }
    fn render(&self, value: &String) -> String {
        value.clone()
    }
}

/// A list item: a local user name (kept in lower case) or `@passwd`.
pub struct LocalUser;

impl Kind for LocalUser {
    type Value = String;
    fn parse(&self, text: &str) -> Result<String, String> {
        if text != "@passwd" && !valid_user_name(text) {
            return Err(format!("'{text}' is not a usable user name"));
        }
        Ok(text.to_ascii_lowercase())
    }
    fn render(&self, value: &String) -> String {
        value.clone()
    }
}
