//! `virtual_alias_file`: addresses that are not accounts, per domain, as
//! Postfix's virtual(5). A line is `KEY target, target, ...`:
//!
//! - `info@example.test alice, bob@elsewhere.test`: an address;
//! - `@example.test catchall`: every other address of the domain;
//! - `example.test anything`: names a virtual alias domain whose every
//!   address must be listed (Postfix's convention; the value is ignored).
//!
//! A target is an address, or a bare name: a local user (or alias) here.
//! The domains of the keys are virtual alias domains: an address of one
//! that the table does not list is refused at RCPT (unless the domain is
//! also one of `local_domains`, where the local users answer). Look-ups
//! try the whole address, then (with `recipient_delimiter`) the address
//! without its extension, then `@domain`. Pure: `load` is the only read.

use std::collections::{HashMap, HashSet};

use crate::address::Mailbox;
use crate::aliases::Target;

#[derive(Debug, Clone, Default)]
pub struct VirtualAliases {
    /// `user@domain` and `@domain` keys, lower case -> targets.
    map: HashMap<String, Vec<Target>>,
    /// The domains the keys name, lower case.
    domains: HashSet<String>,
}

/// Deeper than this, an expansion is taken for a loop.
const MAX_DEPTH: usize = 20;

impl VirtualAliases {
    pub fn load(path: &std::path::Path) -> Result<VirtualAliases, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        VirtualAliases::parse(&text, &path.display().to_string())
    }

    /// `FILE:LINE: what is wrong` for a line that is not `KEY target, ...`.
    pub fn parse(text: &str, file: &str) -> Result<VirtualAliases, String> {
        let mut t = VirtualAliases::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("{file}:{}: {what}", n + 1);
            let (key, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = key.to_ascii_lowercase();
            let targets = targets(rest).map_err(at)?;
            if targets.is_empty() {
                return Err(at(format!("'{key}' has no target")));
            }
            if !key.contains('@') {
                // A domain of its own: a virtual alias domain.
                if !valid_domain(&key) {
                    return Err(at(format!(
                        "expected user@domain, @domain or domain, found '{key}'"
                    )));
                }
                t.domains.insert(key);
                continue;
            }
            let (local, domain) = key.rsplit_once('@').unwrap_or_default();
            if !valid_domain(domain) || (local.is_empty() && !key.starts_with('@')) {
                return Err(at(format!(
                    "expected user@domain, @domain or domain, found '{key}'"
                )));
            }
            if local.is_empty() || Mailbox::parse(&key).is_ok() {
                t.domains.insert(domain.to_string());
                if t.map.insert(key.clone(), targets).is_some() {
                    return Err(at(format!("'{key}' is listed twice")));
                }
            } else {
                return Err(at(format!("bad address '{key}'")));
            }
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A domain the table names (a virtual alias domain).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains(&domain.to_ascii_lowercase())
    }

    /// The targets of `m`: the whole address, then without its extension
    /// (the part from the first `delimiters` character on), then `@domain`.
    pub fn lookup(&self, m: &Mailbox, delimiters: &str) -> Option<&[Target]> {
        let local = m.local_unquoted().to_ascii_lowercase();
        let domain = m.domain.to_lowercase();
        let base = strip_extension(&local, delimiters);
        [
            format!("{local}@{domain}"),
            format!("{base}@{domain}"),
            format!("@{domain}"),
        ]
        .iter()
        .find_map(|k| self.map.get(k))
        .map(Vec::as_slice)
    }

    /// `m` expanded through the table, recursively, duplicates dropped: the
    /// addresses and local names it stands for; `None` when the table does
    /// not list it. A target that is the address itself is kept as it is
    /// (`info@x info@x, bob`); a cycle or a chain deeper than 20 is an error.
    pub fn expand(&self, m: &Mailbox, delimiters: &str) -> Option<Result<Vec<Target>, String>> {
        self.lookup(m, delimiters)?;
        let mut out = Vec::new();
        let mut path = Vec::new();
        Some(
            self.expand_into(m, delimiters, &mut path, &mut out)
                .map(|()| out),
        )
    }

    fn expand_into(
        &self,
        m: &Mailbox,
        delimiters: &str,
        path: &mut Vec<String>,
        out: &mut Vec<Target>,
    ) -> Result<(), String> {
        let me = m.to_string().to_ascii_lowercase();
        let Some(targets) = self.lookup(m, delimiters) else {
            push_unique(out, Target::Remote(m.clone()));
            return Ok(());
        };
        if path.contains(&me) {
            return Err(format!("virtual alias loop: {} -> {me}", path.join(" -> ")));
        }
        if path.len() >= MAX_DEPTH {
            return Err(format!("virtual aliases nested too deeply at <{me}>"));
        }
        path.push(me.clone());
        for t in targets {
            match t {
                Target::Remote(next) if next.to_string().eq_ignore_ascii_case(&me) => {
                    push_unique(out, t.clone())
                }
                Target::Remote(next) => self.expand_into(next, delimiters, path, out)?,
                Target::Local(_) | Target::Command(_) | Target::File(_) => {
                    push_unique(out, t.clone())
                }
            }
        }
        path.pop();
        Ok(())
    }
}

/// `alice+lists` -> `alice` for delimiters `+`; the name itself without
/// delimiters or extension (a name that starts with one is kept whole).
pub fn strip_extension<'a>(local: &'a str, delimiters: &str) -> &'a str {
    match local.find(|c| delimiters.contains(c)) {
        Some(i) if i > 0 && !delimiters.is_empty() => &local[..i],
        _ => local,
    }
}

fn targets(list: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let t = t.trim_start_matches('<').trim_end_matches('>');
        if t.contains('@') {
            let m = Mailbox::parse(t).map_err(|e| format!("bad target '{t}': {e}"))?;
            out.push(Target::Remote(m));
        } else if crate::config::valid_user_name(&t.to_ascii_lowercase()) {
            out.push(Target::Local(t.to_ascii_lowercase()));
        } else {
            return Err(format!("bad target '{t}': not a user name or address"));
        }
    }
    Ok(out)
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn push_unique(out: &mut Vec<Target>, t: Target) {
    if !out.contains(&t) {
        out.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(a: &str) -> Mailbox {
        Mailbox::parse(a).unwrap()
    }

    const TABLE: &str = "# virtual\n\
        info@example.test alice, bob@elsewhere.test\n\
        sales@example.test info@example.test, carol\n\
        self@example.test self@example.test, dave\n\
        @example.test catchall\n\
        strict.test anything\n\
        a@loop.test b@loop.test\nb@loop.test a@loop.test\n";

    #[test]
    fn addresses_extensions_and_catch_alls_are_found_in_that_order() {
        let t = VirtualAliases::parse(TABLE, "v").unwrap();
        assert_eq!(
            t.lookup(&m("Info@Example.test"), ""),
            Some(
                &[
                    Target::Local("alice".into()),
                    Target::Remote(m("bob@elsewhere.test"))
                ][..]
            )
        );
        assert_eq!(
            t.lookup(&m("info+news@example.test"), "+").unwrap().len(),
            2
        );
        assert_eq!(
            t.lookup(&m("nobody@example.test"), "+"),
            Some(&[Target::Local("catchall".into())][..])
        );
        assert!(t.lookup(&m("x@strict.test"), "+").is_none());
        assert!(
            t.has_domain("STRICT.test")
                && t.has_domain("example.test")
                && !t.has_domain("other.test")
        );
    }

    #[test]
    fn expansion_recurses_keeps_self_and_finds_loops() {
        let t = VirtualAliases::parse(TABLE, "v").unwrap();
        let sales = t.expand(&m("sales@example.test"), "").unwrap().unwrap();
        assert_eq!(
            sales,
            vec![
                Target::Local("alice".into()),
                Target::Remote(m("bob@elsewhere.test")),
                Target::Local("carol".into())
            ]
        );
        let me = t.expand(&m("self@example.test"), "").unwrap().unwrap();
        assert_eq!(
            me,
            vec![
                Target::Remote(m("self@example.test")),
                Target::Local("dave".into())
            ]
        );
        assert!(t
            .expand(&m("a@loop.test"), "")
            .unwrap()
            .unwrap_err()
            .contains("loop"));
        assert!(t.expand(&m("x@other.test"), "").is_none());
    }

    #[test]
    fn bad_lines_name_their_file_and_line() {
        let e = |s: &str| VirtualAliases::parse(s, "v").unwrap_err();
        assert_eq!(
            e("info@example.test\n"),
            "v:1: 'info@example.test' has no target"
        );
        assert_eq!(
            e("# x\nuser@ x\n"),
            "v:2: expected user@domain, @domain or domain, found 'user@'"
        );
        assert_eq!(
            e("a@b.test x y\n"),
            "v:1: bad target 'x y': not a user name or address"
        );
        assert_eq!(
            e("a@b.test x\nA@b.test y\n"),
            "v:2: 'a@b.test' is listed twice"
        );
    }

    #[test]
    fn extensions_are_cut_at_the_first_delimiter() {
        assert_eq!(strip_extension("alice+lists+x", "+"), "alice");
        assert_eq!(strip_extension("alice-lists", "+-"), "alice");
        assert_eq!(strip_extension("+alice", "+"), "+alice");
        assert_eq!(strip_extension("alice+x", ""), "alice+x");
    }
}
