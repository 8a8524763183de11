//! Policies the spool keeps for delivery: MTA-STS policies (RFC 8461
//! §5: a sender caches them), one small file per domain under
//! `mta-sts/`, replaced whole (written under `tmp/`, renamed). Losing one
//! costs a fetch, so they are not synced.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::Spool;

/// The directory of the policies in the spool.
const DIR: &str = "mta-sts";

/// A domain as a file name: lower-case letters, digits, `-` and `.` only,
/// and no leading dot; `None` for anything else (nothing is looked up or
/// written for it).
fn file_name(domain: &str) -> Option<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && !d.starts_with('.')
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(d)
}

impl Spool {
    fn policy_path(&self, domain: &str) -> Option<PathBuf> {
        file_name(domain).map(|n| self.root().join(DIR).join(n))
    }

    /// The cached MTA-STS policy record of `domain`, if any.
    pub fn sts_policy(&self, domain: &str) -> Option<String> {
        fs::read_to_string(self.policy_path(domain)?).ok()
    }

    /// Keeps `text` as `domain`'s MTA-STS policy record.
    pub fn keep_sts_policy(&self, domain: &str, text: &str) -> io::Result<()> {
        let path = self
            .policy_path(domain)
            .ok_or_else(|| io::Error::other("not a domain name"))?;
        fs::create_dir_all(self.root().join(DIR))?;
        let tmp = self.root().join("tmp").join(format!(
            "sts.{}.{}",
            std::process::id(),
            file_name(domain).unwrap_or_default()
        ));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_domain_names_become_files() {
        assert_eq!(file_name("Example.ORG.").as_deref(), Some("example.org"));
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "a\0b"] {
            assert_eq!(file_name(bad), None, "{bad:?}");
        }
    }
}
