//! The checks after DATA, before the 250: DKIM signatures verified as the
//! message streamed in (`Verifier`), DMARC from them and the transaction's
//! SPF result, and the one `Authentication-Results:` field (RFC 8601)
//! that says what was found. Without the `tls` feature (no `ring`) there
//! is no verifier: `Verifier` is then an empty stand-in and the stage has
//! nothing to say.

use super::dmarc::{self, DmarcResult, Policy};
use super::{DmarcPolicy, Guard, Quarantine};
use crate::smtp::reply::{Enhanced, Reply};

/// What the DATA stage decided: a refusal instead of the 250, the header
/// fields to put at the top of the message, and whether to hold it.
#[derive(Debug, Default)]
pub struct DataVerdict {
    pub refusal: Option<Reply>,
    pub header: String,
    pub hold: bool,
}

/// DKIM verification of one message, fed as it arrives.
#[cfg(feature = "tls")]
pub struct Verifier(crate::dkim::verify::Verifier);

#[cfg(not(feature = "tls"))]
pub struct Verifier;

/// One signature's result, as Authentication-Results names it.
struct Signed {
    result: String,
    pass: bool,
    domain: String,
    selector: String,
    b: String,
    why: String,
}

impl Verifier {
    pub fn feed(&mut self, _data: &[u8]) {
        #[cfg(feature = "tls")]
        self.0.feed(_data);
    }

    /// The From: domain and the signatures' results; without `ring` no
    /// signature can be checked, and DMARC is not evaluated.
    #[cfg(feature = "tls")]
    fn results(self, dns: &dyn crate::dns::Resolver) -> Option<(Option<String>, Vec<Signed>)> {
        let from = self.0.from_domain();
        let signed = self.0.finish(dns).into_iter().map(|o| Signed {
            result: o.result.to_string(),
            pass: o.result == crate::dkim::verify::DkimResult::Pass,
            domain: o.domain,
            selector: o.selector,
            b: o.b,
            why: o.why,
        });
        Some((from, signed.collect()))
    }

    #[cfg(not(feature = "tls"))]
    fn results(self, _dns: &dyn crate::dns::Resolver) -> Option<(Option<String>, Vec<Signed>)> {
        None
    }
}

impl Guard {
    /// A verifier for this message, when DKIM or DMARC results are wanted
    /// (untrusted clients only; the caller decides that).
    pub fn verifier(&self) -> Option<Verifier> {
        let wanted = (self.dkim_verify || self.dmarc != DmarcPolicy::None) && self.dns.is_some();
        #[cfg(feature = "tls")]
        return wanted.then(|| Verifier(Default::default()));
        #[cfg(not(feature = "tls"))]
        return wanted.then_some(Verifier);
    }

    /// The name of our Authentication-Results: fields.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Results and verdict for a message whose data `v` has seen.
    pub fn data_stage(
        &self,
        v: Verifier,
        spf: &Option<(super::spf::SpfResult, String)>,
    ) -> DataVerdict {
        let Some(dns) = self.dns.as_deref() else {
            return DataVerdict::default();
        };
        let Some((from, dkim)) = v.results(dns) else {
            return DataVerdict::default();
        };
        let mut parts = Vec::new();
        if let Some((result, domain)) = spf {
            parts.push(format!("spf={result} smtp.mailfrom={domain}"));
        }
        for o in &dkim {
            let why = match o.why.as_str() {
                "" => String::new(),
                w => format!(" ({})", clean(w)),
            };
            parts.push(format!(
                "dkim={}{why} header.d={} header.s={} header.b={}",
                o.result,
                clean(&o.domain),
                clean(&o.selector),
                clean(&o.b)
            ));
        }
        if dkim.is_empty() {
            parts.push("dkim=none".into());
        }
        let mut verdict = DataVerdict::default();
        if let (DmarcPolicy::Tag | DmarcPolicy::Honour, Some(from)) = (self.dmarc, &from) {
            let passed: Vec<String> = dkim
                .iter()
                .filter(|o| o.pass)
                .map(|o| o.domain.clone())
                .collect();
            let spf_pass = match spf {
                Some((super::spf::SpfResult::Pass, d)) => Some(d.as_str()),
                _ => None,
            };
            let evidence = dmarc::Evidence {
                from_domain: from,
                spf_pass,
                dkim_pass: &passed,
            };
            let d = dmarc::evaluate(&evidence, dns);
            parts.push(format!(
                "dmarc={} (p={}) header.from={}",
                d.result,
                d.policy.name(),
                clean(from)
            ));
            self.apply_dmarc(&d, &mut verdict);
        }
        verdict.header = format!(
            "Authentication-Results: {};\r\n\t{}\r\n{}",
            self.authserv_id,
            parts.join(";\r\n\t"),
            verdict.header
        );
        verdict
    }

    /// dmarc_policy = honour: p=reject refuses, p=quarantine holds or tags.
    fn apply_dmarc(&self, d: &dmarc::Verdict, verdict: &mut DataVerdict) {
        if d.result != DmarcResult::Fail || self.dmarc != DmarcPolicy::Honour {
            return;
        }
        log::info!(
            "dmarc: {} fails its p={} policy",
            d.from_domain,
            d.policy.name()
        );
        match (d.policy, &self.quarantine) {
            (Policy::Reject, _) => {
                let text = format!(
                    "Email rejected per DMARC policy for {}",
                    clean(&d.from_domain)
                );
                verdict.refusal = Some(Reply::new(550, Enhanced(5, 7, 1), text));
            }
            (Policy::Quarantine, Quarantine::Hold) => verdict.hold = true,
            (Policy::Quarantine, Quarantine::Header(h)) => verdict.header = format!("{h}\r\n"),
            (Policy::None, _) => {}
        }
    }
}

/// A value from the message or the DNS as it may appear in a header
/// field: printable, no characters that end a property or a comment.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' | '(' | ')' | '\\' | '"' => '?',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(200)
        .collect()
}

/// Is `field` (a whole header field) an Authentication-Results: field
/// that claims to be ours (RFC 8601 §5: such fields from outside are
/// forgeries and are removed)?
pub fn claims_to_be(field: &[u8], authserv_id: &str) -> bool {
    let text = String::from_utf8_lossy(field);
    let Some((name, value)) = text.split_once(':') else {
        return false;
    };
    if !name.trim().eq_ignore_ascii_case("authentication-results") {
        return false;
    }
    let id = value
        .trim_start()
        .split(|c: char| c == ';' || c.is_ascii_whitespace())
        .next()
        .unwrap_or("");
    id.eq_ignore_ascii_case(authserv_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_with_our_name_are_recognized() {
        assert!(claims_to_be(
            b"Authentication-Results: mx.test; dkim=pass\r\n",
            "MX.test"
        ));
        assert!(claims_to_be(
            b"authentication-results:mx.test;\r\n\tspf=pass\r\n",
            "mx.test"
        ));
        assert!(!claims_to_be(
            b"Authentication-Results: other.test; dkim=pass\r\n",
            "mx.test"
        ));
        assert!(!claims_to_be(b"Subject: mx.test\r\n", "mx.test"));
    }

    #[test]
    fn quarantine_actions_parse() {
        assert_eq!(Quarantine::parse("hold"), Ok(Quarantine::Hold));
        assert_eq!(
            Quarantine::parse("X-Spam-Flag: YES"),
            Ok(Quarantine::Header("X-Spam-Flag: YES".into()))
        );
        assert!(Quarantine::parse("nonsense").is_err());
        assert!(Quarantine::parse("Bad Name: x").is_err());
    }
}
