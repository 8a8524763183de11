//! The aliases file (`etc/aliases`), in the format of sendmail and Postfix:
//! `name: target, target`, `#` comments, continuation lines that start
//! with white space. A target is a local user or a remote address.
//! Parsing is pure; `load` is the one function that reads a file.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    /// Lower-cased alias name -> targets as written.
    pub map: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasError {
    pub line: usize,
    pub what: String,
}

impl fmt::Display for AliasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

impl Aliases {
    pub fn parse(text: &str) -> Result<Aliases, AliasError> {
        // Join continuation lines first, remembering where each entry began.
        let mut entries: Vec<(usize, String)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                match entries.last_mut() {
                    Some((_, e)) => {
                        e.push(' ');
                        e.push_str(trimmed);
                    }
                    None => {
                        return Err(AliasError {
                            line: n + 1,
                            what: "continuation line without an entry".into(),
                        })
                    }
                }
            } else {
                entries.push((n + 1, trimmed.to_string()));
            }
        }
        let mut map = HashMap::new();
        for (line, e) in entries {
            let err = |what: String| AliasError { line, what };
            let (name, targets) = e
                .split_once(':')
                .ok_or_else(|| err("expected 'name: target, ...'".into()))?;
            let name = name.trim().to_ascii_lowercase();
            if !crate::config::valid_user_name(&name) {
                return Err(err(format!("'{name}' is not a usable alias name")));
            }
            let targets = split_targets(targets).map_err(err)?;
            if targets.is_empty() {
                return Err(err(format!("alias '{name}' has no target")));
            }
            for t in &targets {
                check_target(t).map_err(err)?;
            }
            if map.insert(name.clone(), targets).is_some() {
                return Err(err(format!("alias '{name}' is defined twice")));
            }
        }
        Ok(Aliases { map })
    }

    /// Reads the file; a missing file is an empty table. `:include:`
    /// files are read now (at start and at SIGHUP), their targets put in
    /// place of the `:include:` line's.
    pub fn load(path: &Path) -> Result<Aliases, String> {
        let mut a = match std::fs::read_to_string(path) {
            Ok(t) => Aliases::parse(&t)
                .map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.what))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Aliases::default()),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        for (name, targets) in a.map.iter_mut() {
            let mut out = Vec::with_capacity(targets.len());
            for t in targets.drain(..) {
                match t.strip_prefix(":include:") {
                    Some(file) => out.extend(
                        include(Path::new(file))
                            .map_err(|e| format!("{}: alias '{name}': {e}", path.display()))?,
                    ),
                    None => out.push(t),
                }
            }
            *targets = out;
        }
        Ok(a)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(&name.to_ascii_lowercase())
    }

    /// Expands `name` recursively into local users and remote addresses.
    /// A name that is not an alias is itself a local user; an alias that
    /// names itself (`root: root, x@y`) means "and also my own mailbox".
    /// A cycle (`a: b`, `b: a`) is an error, as is nesting deeper than 20.
    pub fn expand(&self, name: &str) -> Result<Vec<Target>, String> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        self.expand_into(&name.to_ascii_lowercase(), &mut path, &mut out)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        name: &str,
        path: &mut Vec<String>,
        out: &mut Vec<Target>,
    ) -> Result<(), String> {
        let Some(targets) = self.map.get(name) else {
            push_unique(out, Target::Local(name.to_string()));
            return Ok(());
        };
        if path.iter().any(|p| p == name) {
            return Err(format!("alias loop: {} -> {name}", path.join(" -> ")));
        }
        if path.len() >= 20 {
            return Err(format!("aliases nested too deeply at '{name}'"));
        }
        path.push(name.to_string());
        for t in targets {
            if let Some(cmd) = t.strip_prefix('|') {
                push_unique(out, Target::Command(cmd.trim().to_string()));
            } else if t.starts_with('/') {
                push_unique(out, Target::File(t.clone()));
            } else if t.contains('@') {
                if let Ok(m) = crate::address::Mailbox::parse(t) {
                    push_unique(out, Target::Remote(m));
                }
            } else if t.eq_ignore_ascii_case(name) {
                push_unique(out, Target::Local(name.to_string()));
            } else {
                self.expand_into(&t.to_ascii_lowercase(), path, out)?;
            }
        }
        path.pop();
        Ok(())
    }
}

/// Where an alias leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local user (a mailbox under `mail_dir`).
    Local(String),
    /// An address that is delivered like any other (relayed when remote).
    Remote(crate::address::Mailbox),
    /// `|command`: the message on the command's standard input.
    Command(String),
    /// `/path/file`: appended to, as an mbox.
    File(String),
}

/// The targets of an alias line: comma-separated, a double-quoted one
/// (`"|procmail -a x"`) may hold commas; the quotes are removed.
pub fn split_targets(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in list.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out
        .into_iter()
        .map(|t| {
            t.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .filter(|t| !t.is_empty())
        .collect())
}

/// A target that can be delivered: an address, a user name, `|command`,
/// `/path/file` or `:include:/path`.
pub fn check_target(t: &str) -> Result<(), String> {
    if let Some(cmd) = t.strip_prefix('|') {
        return match cmd.trim().is_empty() {
            true => Err(format!("bad target '{t}': empty command")),
            false => Ok(()),
        };
    }
    if let Some(file) = t.strip_prefix(":include:") {
        return match file.starts_with('/') {
            true => Ok(()),
            false => Err(format!(
                "bad target '{t}': :include: needs an absolute path"
            )),
        };
    }
    if t.starts_with('/') {
        return Ok(());
    }
    if t.contains('@') {
        return crate::address::Mailbox::parse(t)
            .map(|_| ())
            .map_err(|x| format!("bad target '{t}': {x}"));
    }
    match crate::config::valid_user_name(t) {
        true => Ok(()),
        false => Err(format!("bad target '{t}': not a user name or address")),
    }
}

/// The targets an `:include:` file lists (commas or lines; `#` comments;
/// no `:include:` inside).
fn include(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!(":include:{}: cannot read: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!(":include:{}:{}: {e}", path.display(), n + 1);
        for t in split_targets(line).map_err(at)? {
            if t.starts_with(":include:") {
                return Err(at("an :include: file cannot include another".into()));
            }
            check_target(&t).map_err(at)?;
            out.push(t);
        }
    }
    Ok(out)
}

fn push_unique(out: &mut Vec<Target>, t: Target) {
    if !out.contains(&t) {
        out.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse_with_comments_and_continuations() {
        let a =
            Aliases::parse("# x\npostmaster: root\nstaff: alice,\n  bob, carol@remote.example\n")
                .unwrap();
        assert_eq!(a.map["postmaster"], vec!["root"]);
        assert_eq!(a.map["staff"], vec!["alice", "bob", "carol@remote.example"]);
        assert!(a.contains("Staff"));
    }

    #[test]
    fn aliases_expand_recursively_with_loops_detected() {
        let a = Aliases::parse("postmaster: root\nroot: root, admin@remote.test\nstaff: postmaster, bob, bob\nx: y\ny: x\n").unwrap();
        let remote = crate::address::Mailbox::parse("admin@remote.test").unwrap();
        assert_eq!(
            a.expand("STAFF").unwrap(),
            vec![
                Target::Local("root".into()),
                Target::Remote(remote),
                Target::Local("bob".into())
            ]
        );
        assert_eq!(
            a.expand("alice").unwrap(),
            vec![Target::Local("alice".into())]
        );
        assert!(a.expand("x").unwrap_err().contains("loop"));
    }

    #[test]
    fn broken_aliases_are_refused_with_a_line() {
        assert_eq!(Aliases::parse("a: b\nnocolon\n").unwrap_err().line, 2);
        assert!(Aliases::parse("../x: root\n").is_err());
        assert!(Aliases::parse("x: ../root\n").is_err());
        assert!(Aliases::parse("x:\n").is_err());
        assert!(Aliases::parse("x: a\nx: b\n").is_err());
    }
}
