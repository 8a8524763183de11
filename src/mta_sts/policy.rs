//! MTA-STS texts (RFC 8461), pure: the `_mta-sts` TXT record (§3.1), the
//! policy file (§3.2) and which MX host names a policy allows (§4.1).

/// The most of a policy file satchel reads (RFC 8461 §3.3 lets a sender
/// refuse larger ones; 64 KiB, as the issue of record sets).
pub const MAX_POLICY: usize = 64 * 1024;

/// RFC 8461 §3.2: at most a year.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only listed MX hosts, with verified TLS, or the mail waits.
    Enforce,
    /// Failures are logged; the mail goes as without a policy.
    Testing,
    /// No policy (a domain withdrawing one).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx` patterns, lower case: names, or `*.` and a name (one label).
    pub mx: Vec<String>,
    /// Seconds the policy may be kept (capped at a year).
    pub max_age: u64,
}

/// RFC 8461 §3.1: `v=STSv1; id=...;` — the id, or `None` when the record
/// is not an STSv1 record or has no valid id (1 to 32 letters and digits).
pub fn txt_id(record: &str) -> Option<String> {
    let mut fields = record.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let mut id = None;
    for f in fields {
        let (k, v) = f.split_once('=')?;
        if k.trim() == "id" {
            let v = v.trim();
            let ok = !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric());
            id = Some(v.to_string()).filter(|_| ok);
        }
    }
    id
}

/// The one STSv1 record of a TXT set (§3.1: none or several mean no policy).
pub fn txt_of(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [one] => txt_id(one),
        _ => None,
    }
}

/// RFC 8461 §3.2: `key: value` lines (CRLF or LF); `version: STSv1`,
/// `mode`, `max_age` and at least one `mx` (but for mode none) needed;
/// unknown keys are ignored.
pub fn parse(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (false, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or("a line without ':'")?;
        let v = v.trim();
        match k.trim() {
            "version" => version = v == "STSv1",
            "mode" => mode = Some(mode_of(v)?),
            "max_age" => max_age = Some(max_age_of(v)?),
            "mx" => mx.push(mx_pattern(v)?),
            _ => {}
        }
    }
    if !version {
        return Err("no 'version: STSv1'".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

fn mode_of(v: &str) -> Result<Mode, String> {
    match v {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        other => Err(format!(
            "unknown mode {}",
            other.chars().take(20).collect::<String>()
        )),
    }
}

/// 1 to 10 digits, at most a year.
fn max_age_of(v: &str) -> Result<u64, String> {
    let digits = !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit());
    let n: u64 = v.parse().ok().filter(|_| digits).ok_or("bad max_age")?;
    Ok(n.min(MAX_AGE_LIMIT))
}

/// A host name, or `*.` and one, in lower case.
fn mx_pattern(v: &str) -> Result<String, String> {
    let name = v.strip_prefix("*.").unwrap_or(v);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    match ok {
        true => Ok(v.to_ascii_lowercase()),
        false => Err("bad mx pattern".into()),
    }
}

impl Policy {
    /// §4.1: `host` is listed: equal to a name, or a `*.` pattern with
    /// exactly one label in the place of the `*`.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(rest) => host
                .split_once('.')
                .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
            None => *p == host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_txt_record_needs_version_first_and_a_good_id() {
        assert_eq!(
            txt_id("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(txt_id("v=STSv1;id=abc").as_deref(), Some("abc"));
        for bad in [
            "id=abc; v=STSv1",
            "v=STSv2; id=abc",
            "v=STSv1;",
            "v=STSv1; id=a-b",
            "v=STSv1; id=",
        ] {
            assert_eq!(txt_id(bad), None, "{bad}");
        }
        let two = vec!["v=STSv1; id=a".to_string(), "v=STSv1; id=b".to_string()];
        assert_eq!(txt_of(&two), None, "two records: no policy");
        let mixed = vec!["v=spf1 -all".to_string(), "v=STSv1; id=a".to_string()];
        assert_eq!(txt_of(&mixed).as_deref(), Some("a"));
    }

    #[test]
    fn the_policy_of_rfc_8461_parses_and_matches_its_mx_hosts() {
        let p = parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert!(p.allows("mail.example.com") && p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net") && !p.allows("example.net"));
        assert!(!p.allows("a.b.example.net"), "one label for the *");
        assert!(!p.allows("evil.example.com"));
        let long = parse(
            "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999999\nextra: ignored\n",
        );
        assert!(long.is_err(), "11 digits");
        let capped =
            parse("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 9999999999\n").unwrap();
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
        assert_eq!(
            parse("version: STSv1\nmode: none\nmax_age: 1\n")
                .unwrap()
                .mode,
            Mode::None
        );
        for bad in [
            "",
            "mode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "version STSv1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
