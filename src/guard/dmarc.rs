//! DMARC (RFC 7489): does the domain of the `From:` field stand behind
//! this message? It does when SPF passed for an aligned MAIL FROM domain,
//! or a DKIM signature of an aligned domain verified (§3.1; relaxed
//! alignment compares organizational domains, `psl`). The policy is the
//! `_dmarc` TXT record of the From: domain, else of its organizational
//! domain (§6.6.3), whose `sp=` then applies.

use crate::dns::{DnsError, Resolver};

use super::psl::org_domain;

/// A domain owner's requested handling (§6.3 `p=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

impl Policy {
    fn parse(v: &str) -> Option<Policy> {
        match v.to_ascii_lowercase().as_str() {
            "none" => Some(Policy::None),
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }
}

/// The parts of a DMARC record evaluation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub p: Policy,
    pub sp: Option<Policy>,
    pub strict_dkim: bool,
    pub strict_spf: bool,
}

/// §6.3: `v=DMARC1` first, then tags; None for anything that is not a
/// DMARC record. An unknown or missing `p=` is `none` (§6.6.3 step 6).
pub fn parse_record(text: &str) -> Option<Record> {
    let mut tags = text.split(';').map(|t| t.trim());
    let v = tags.next()?;
    let (name, value) = v.split_once('=')?;
    if name.trim() != "v" || value.trim() != "DMARC1" {
        return None;
    }
    let mut r = Record {
        p: Policy::None,
        sp: None,
        strict_dkim: false,
        strict_spf: false,
    };
    for tag in tags {
        let Some((name, value)) = tag.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match name.trim() {
            "p" => r.p = Policy::parse(value).unwrap_or(Policy::None),
            "sp" => r.sp = Policy::parse(value),
            "adkim" => r.strict_dkim = value.eq_ignore_ascii_case("s"),
            "aspf" => r.strict_spf = value.eq_ignore_ascii_case("s"),
            _ => {}
        }
    }
    Some(r)
}

/// The DMARC result (RFC 8601 §2.7.4, RFC 7489 §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcResult {
    None,
    Pass,
    Fail,
    TempError,
    PermError,
}

impl std::fmt::Display for DmarcResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DmarcResult::None => "none",
            DmarcResult::Pass => "pass",
            DmarcResult::Fail => "fail",
            DmarcResult::TempError => "temperror",
            DmarcResult::PermError => "permerror",
        })
    }
}

/// What evaluation found: the result and the policy that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: DmarcResult,
    pub policy: Policy,
    pub from_domain: String,
}

/// The authenticated identifiers of a message.
pub struct Evidence<'a> {
    /// The RFC5322.From domain, lower case.
    pub from_domain: &'a str,
    /// The MAIL FROM (or HELO) domain when SPF passed for it.
    pub spf_pass: Option<&'a str>,
    /// The `d=` of each DKIM signature that verified.
    pub dkim_pass: &'a [String],
}

fn aligned(a: &str, b: &str, strict: bool) -> bool {
    a.eq_ignore_ascii_case(b) || (!strict && org_domain(a) == org_domain(b))
}

/// §6.6.2: the record of the From: domain, else of its organizational
/// domain (and then `sp=` is the policy).
fn find(from: &str, dns: &dyn Resolver) -> Result<Option<(Record, bool)>, DnsError> {
    let org = org_domain(from);
    for (name, is_org) in [(from.to_string(), false), (org.clone(), true)] {
        if is_org && name == from {
            break;
        }
        let txt = match dns.txt(&format!("_dmarc.{name}")) {
            Ok(t) => t,
            Err(DnsError::NxDomain) => continue,
            Err(e) => return Err(e),
        };
        let records: Vec<Record> = txt.iter().filter_map(|t| parse_record(t)).collect();
        // §6.6.3 step 5: more than one record is as none.
        if let [r] = records.as_slice() {
            return Ok(Some((r.clone(), is_org)));
        }
    }
    Ok(None)
}

pub fn evaluate(e: &Evidence, dns: &dyn Resolver) -> Verdict {
    let verdict = |result, policy| Verdict {
        result,
        policy,
        from_domain: e.from_domain.to_string(),
    };
    let (record, from_org) = match find(e.from_domain, dns) {
        Ok(Some(r)) => r,
        Ok(None) => return verdict(DmarcResult::None, Policy::None),
        Err(_) => return verdict(DmarcResult::TempError, Policy::None),
    };
    let policy = match (from_org, record.sp) {
        (true, Some(sp)) => sp,
        _ => record.p,
    };
    let spf = e
        .spf_pass
        .is_some_and(|d| aligned(d, e.from_domain, record.strict_spf));
    let dkim = e
        .dkim_pass
        .iter()
        .any(|d| aligned(d, e.from_domain, record.strict_dkim));
    match spf || dkim {
        true => verdict(DmarcResult::Pass, policy),
        false => verdict(DmarcResult::Fail, policy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Mx;
    use std::collections::HashMap;
    use std::net::IpAddr;

    struct Txt(HashMap<&'static str, &'static str>);

    impl Resolver for Txt {
        fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
            Err(DnsError::NxDomain)
        }
        fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
            Err(DnsError::NxDomain)
        }
        fn txt(&self, n: &str) -> Result<Vec<String>, DnsError> {
            if n.contains("broken") {
                return Err(DnsError::Temporary("SERVFAIL".into()));
            }
            self.0
                .get(n)
                .map(|t| vec![t.to_string()])
                .ok_or(DnsError::NxDomain)
        }
    }

    fn dns() -> Txt {
        Txt(HashMap::from([
            (
                "_dmarc.example.com",
                "v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=s",
            ),
            ("_dmarc.strict.test", "v=DMARC1; p=quarantine; adkim=s"),
            ("_dmarc.bogus.test", "p=reject; v=DMARC1"),
        ]))
    }

    fn eval(from: &str, spf: Option<&str>, dkim: &[&str]) -> Verdict {
        let dkim: Vec<String> = dkim.iter().map(|s| s.to_string()).collect();
        evaluate(
            &Evidence {
                from_domain: from,
                spf_pass: spf,
                dkim_pass: &dkim,
            },
            &dns(),
        )
    }

    #[test]
    fn alignment_and_policies() {
        let v = eval("example.com", None, &["mail.example.com"]);
        assert_eq!(
            (v.result, v.policy),
            (DmarcResult::Pass, Policy::Reject),
            "relaxed DKIM"
        );
        let v = eval("example.com", Some("bounce.example.com"), &[]);
        assert_eq!(
            v.result,
            DmarcResult::Fail,
            "aspf=s: a subdomain is not aligned"
        );
        assert_eq!(
            eval("example.com", Some("example.com"), &[]).result,
            DmarcResult::Pass
        );
        let v = eval("news.example.com", None, &["other.test"]);
        assert_eq!(
            (v.result, v.policy),
            (DmarcResult::Fail, Policy::Quarantine),
            "sp= for a subdomain"
        );
        assert_eq!(
            eval("strict.test", None, &["a.strict.test"]).result,
            DmarcResult::Fail
        );
        assert_eq!(eval("nodmarc.test", None, &[]).result, DmarcResult::None);
        assert_eq!(
            eval("bogus.test", None, &[]).result,
            DmarcResult::None,
            "v= must come first"
        );
        assert_eq!(
            eval("broken.test", None, &[]).result,
            DmarcResult::TempError
        );
    }

    #[test]
    fn records_parse_leniently() {
        let r = parse_record("v=DMARC1;p=REJECT;rua=mailto:x@y.test;foo").unwrap();
        assert_eq!(r.p, Policy::Reject);
        assert_eq!(parse_record("v=DMARC1; p=bogus").unwrap().p, Policy::None);
        assert!(parse_record("v=spf1 -all").is_none());
        assert!(parse_record("").is_none());
    }
}
