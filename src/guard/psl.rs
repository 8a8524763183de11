//! Organizational domains (RFC 7489 §3.2) from the Public Suffix List:
//! the bundled snapshot (`public_suffix_list.dat`, its date and source in
//! its first lines and in README), parsed once on first use.

use std::collections::HashSet;
use std::sync::OnceLock;

const LIST: &str = include_str!("public_suffix_list.dat");

struct Rules {
    plain: HashSet<&'static str>,
    /// `*.suffix`: every label under `suffix` is a public suffix.
    wild: HashSet<&'static str>,
    /// `!name`: an exception to a wildcard.
    except: HashSet<&'static str>,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut r = Rules {
            plain: HashSet::new(),
            wild: HashSet::new(),
            except: HashSet::new(),
        };
        for line in LIST
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
        {
            if let Some(s) = line.strip_prefix("*.") {
                r.wild.insert(s);
            } else if let Some(s) = line.strip_prefix('!') {
                r.except.insert(s);
            } else {
                r.plain.insert(line);
            }
        }
        r
    })
}

/// The public suffix of `domain` (lower case, no trailing dot), by the
/// list's algorithm: the longest matching rule, exceptions first; a name
/// no rule matches has its last label as suffix (the implicit `*`).
fn suffix_len(labels: &[&str]) -> usize {
    let r = rules();
    for i in 0..labels.len() {
        let name = labels[i..].join(".");
        if r.except.contains(name.as_str()) {
            return labels.len() - i - 1;
        }
        if r.plain.contains(name.as_str()) {
            return labels.len() - i;
        }
        if i + 1 < labels.len() && r.wild.contains(labels[i + 1..].join(".").as_str()) {
            return labels.len() - i;
        }
    }
    1
}

/// The organizational domain of `domain`: its public suffix and one label
/// more; a domain that is itself a public suffix is its own.
pub fn org_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let n = suffix_len(&labels);
    if labels.len() <= n {
        return d;
    }
    labels[labels.len() - n - 1..].join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizational_domains() {
        for (d, org) in [
            ("mail.example.com", "example.com"),
            ("example.com", "example.com"),
            ("a.b.example.co.uk", "example.co.uk"),
            ("com", "com"),
            ("x.y.unknowntld", "y.unknowntld"),
            ("MAIL.Example.ORG.", "example.org"),
            // *.ck with the exception !www.ck
            ("a.b.ck", "a.b.ck"),
            ("mail.www.ck", "www.ck"),
            // An internationalized suffix, as A-labels.
            ("mail.example.xn--p1ai", "example.xn--p1ai"),
        ] {
            assert_eq!(org_domain(d), org, "{d}");
        }
    }
}
