//! Builds delivery status notifications (RFC 3464, carried in RFC 6522's
//! `multipart/report`): a plain-text explanation, a
//! `message/delivery-status` part, and the original headers as
//! `text/rfc822-headers` (or the whole message, as `message/rfc822`, for
//! RET=FULL). Used for bounces (`Action: failed`), delay warnings
//! (`Action: delayed`) and the success notices RFC 3461 lets a sender ask
//! for (`delivered`, `relayed`, `expanded`). Pure: bytes in, bytes out;
//! queueing the result (from the null reverse-path `<>`) is `delivery`'s
//! job.

use crate::status::Status;
use crate::time;

/// RFC 3462/6522: how much of the original header section is returned.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// One recipient to report on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Address without angle brackets.
    pub recipient: String,
    /// The remote reply or the local reason: its enhanced code is the
    /// report's `Status`, its text the `Diagnostic-Code`.
    pub status: Status,
    /// The host that gave the reply, when one did.
    pub remote_mta: Option<String>,
    /// What became of it (RFC 3464 §2.3.3).
    pub action: Action,
    /// The sender's ORCPT, decoded (`rfc822;a@b.example`, RFC 3464 §2.3.1).
    pub original: Option<String>,
}

/// RFC 3464 §2.3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    /// A success notice (asked for with NOTIFY=SUCCESS).
    pub fn is_success(self) -> bool {
        !matches!(self, Action::Failed | Action::Delayed)
    }
}

pub struct Notice<'a> {
    /// The kind of notice (any success action: a success notice); each
    /// report has its own action.
    pub action: Action,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// Original sender, without angle brackets (the notice's `To:`).
    pub to: &'a str,
    pub arrival: u64,
    pub now: u64,
    pub reports: &'a [Report],
    /// The original message: its header section is returned, or all of
    /// it when `full`.
    pub original: &'a [u8],
    pub full: bool,
    /// The sender's ENVID, decoded (RFC 3464 §2.2.1).
    pub envid: Option<&'a str>,
}

/// The header section of a message: up to and including the empty line.
pub fn header_section(msg: &[u8]) -> &[u8] {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(msg.len());
    &msg[..end.min(MAX_RETURNED_HEADERS)]
}

/// Keeps a line of peer text safe inside a header-like field.
/// Control characters made spaces, and at most 900 octets (whole
/// characters), so every line stays under RFC 5322's 998.
fn clean(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > 900 {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// 64 random bits as 16 hex digits, different at every call (RandomState
/// is seeded from the OS; a counter and the clock make each value new).
fn unique() -> String {
    use std::hash::BuildHasher;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:016X}",
        std::collections::hash_map::RandomState::new().hash_one((n, nanos))
    )
}

/// The notice as a message: header, then the three parts of RFC 3464.
pub fn build(n: &Notice) -> Vec<u8> {
    let returned = match n.full {
        true => n.original,
        false => header_section(n.original),
    };
    let boundary = boundary_for(n, returned);
    // Text that is not ASCII (a remote's reply, an SMTPUTF8 address, the
    // returned headers) is labelled 8bit, and the report and headers parts
    // take their RFC 6533 types.
    let eight_bit = !returned.is_ascii()
        || n.reports
            .iter()
            .any(|r| !r.recipient.is_ascii() || !r.status.text.is_ascii());
    let cte = if eight_bit {
        "Content-Transfer-Encoding: 8bit\r\n"
    } else {
        ""
    };
    let mut m = header(n, &boundary);
    m.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n{cte}\r\n"));
    m.push_str(&explanation(n));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/{}delivery-status\r\n{cte}\r\n",
        if eight_bit { "global-" } else { "" }
    ));
    m.push_str(&delivery_status(n));
    let (what, kind) = match (n.full, eight_bit) {
        (true, true) => ("Message", "message/global"),
        (true, false) => ("Message", "message/rfc822"),
        (false, true) => ("Message Headers", "message/global-headers"),
        (false, false) => ("Message Headers", "text/rfc822-headers"),
    };
    let whose = match n.action {
        Action::Failed => "Undelivered ",
        _ => "",
    };
    m.push_str(&format!(
        "--{boundary}\r\nContent-Description: {whose}{what}\r\nContent-Type: {kind}\r\n{cte}\r\n"
    ));
    let mut out = m.into_bytes();
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// RFC 2046 §5.1.1: a boundary (at most 70 characters) that appears in
/// none of the parts. The returned headers are the sender's text, so it
/// is not guessable and is checked against them.
fn boundary_for(n: &Notice, returned: &[u8]) -> String {
    loop {
        let b = format!("{}/{}", unique(), n.queue_id);
        let marker = format!("--{b}");
        if !returned
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
        {
            return b;
        }
    }
}

/// The notice's own header section, through the MIME preamble.
fn header(n: &Notice, boundary: &str) -> String {
    let subject = match n.action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        _ => "Successful Mail Delivery Report",
    };
    let message_id = format!("<{}.{}.{}@{}>", n.queue_id, n.now, unique(), n.hostname);
    let mut m = String::new();
    m.push_str(&format!(
        "From: MAILER-DAEMON@{} (Mail Delivery System)\r\n",
        n.hostname
    ));
    m.push_str(&format!("To: <{}>\r\n", n.to));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", time::rfc5322(n.now)));
    m.push_str(&format!("Message-ID: {message_id}\r\n"));
    // RFC 3834: an automatic response; nobody should answer it.
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");
    m
}

/// The first part: what happened, in words, a line per recipient.
fn explanation(n: &Notice) -> String {
    let intro = match n.action {
        Action::Failed => "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. The reasons are below.\r\n",
        Action::Delayed => "This is a warning only: your message has not yet been delivered\r\nto the recipients below. Delivery will be retried; you do not\r\nneed to send it again.\r\n",
        _ => "You asked to be told when your message arrived. It has, for the\r\nrecipients below: \"delivered\" means it is in their mailbox;\r\n\"relayed\" that it went on to a host that sends no such notices,\r\nso you will hear more only if that host cannot deliver it;\r\n\"expanded\" that it went on to the members of a list or alias.\r\n",
    };
    let mut m = format!(
        "This is the mail system at host {}.\r\n\r\n{intro}\r\n",
        n.hostname
    );
    for r in n.reports {
        m.push_str(&format!(
            "<{}>: {}{}\r\n",
            clean(&r.recipient),
            match n.action.is_success() {
                true => format!("{}: ", r.action.word()),
                false => String::new(),
            },
            clean(&r.status.to_string())
        ));
    }
    m.push_str("\r\n");
    m
}

/// The second part: the per-message and per-recipient fields (RFC 3464 §2.2, §2.3).
fn delivery_status(n: &Notice) -> String {
    let mut m = String::new();
    if let Some(envid) = n.envid {
        m.push_str(&format!("Original-Envelope-Id: {}\r\n", clean(envid)));
    }
    m.push_str(&format!("Reporting-MTA: dns; {}\r\n", n.hostname));
    m.push_str(&format!("X-Satchel-Queue-ID: {}\r\n", n.queue_id));
    m.push_str(&format!("Arrival-Date: {}\r\n", time::rfc5322(n.arrival)));
    for r in n.reports {
        let kind = if r.recipient.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        m.push_str("\r\n");
        if let Some(o) = &r.original {
            m.push_str(&format!("Original-Recipient: {}\r\n", clean(o)));
        }
        m.push_str(&format!(
            "Final-Recipient: {kind}; {}\r\n",
            clean(&r.recipient)
        ));
        m.push_str(&format!("Action: {}\r\n", r.action.word()));
        m.push_str(&format!("Status: {}\r\n", r.status.enhanced));
        if let Some(mta) = &r.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(mta)));
        }
        // RFC 3464 §2.3.6: an SMTP reply is an `smtp` diagnostic.
        let kind = if r.remote_mta.is_some() && r.status.code.is_some() {
            "smtp"
        } else {
            "x-satchel"
        };
        m.push_str(&format!(
            "Diagnostic-Code: {kind}; {}\r\n",
            clean(&r.status.to_string())
        ));
    }
    m.push_str("\r\n");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A non-delivery notice of message ABC to a@b, at time 60.
    fn failed_notice(reports: &[Report], original: &[u8]) -> String {
        String::from_utf8(build(&Notice {
            action: Action::Failed,
            hostname: "mx.local.test",
            queue_id: "ABC",
            to: "a@b",
            arrival: 0,
            now: 60,
            reports,
            original,
            full: false,
            envid: None,
        }))
        .unwrap()
    }

    #[test]
    fn a_bounce_has_the_three_parts_of_rfc_3464() {
        let reports = vec![Report {
            recipient: "bob@remote.test".into(),
            status: Status::parse("550 5.1.1 <bob@remote.test>: User unknown", 5),
            remote_mta: Some("mx.remote.test".into()),
            action: Action::Failed,
            original: None,
        }];
        let original = b"Subject: hello\r\nFrom: a@b\r\n\r\nsecret body\r\n";
        let s = failed_notice(&reports, original);
        assert!(s.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(s.contains(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.local.test\r\n"
        ));
        assert!(s.contains("Final-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\n"));
        assert!(s.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: User unknown\r\n"));
        assert!(
            s.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nFrom: a@b\r\n")
        );
        assert!(!s.contains("secret body"), "only the headers are returned");
        assert!(!s.replace("\r\n", "").contains('\n'), "CRLF only");
    }

    #[test]
    fn success_notice_with_envelope_id_original_recipient_and_full_return() {
        let reports = vec![
            Report {
                recipient: "bob@remote.test".into(),
                status: Status::parse("250 2.0.0 Ok: queued as 1", 2),
                remote_mta: Some("mx.remote.test".into()),
                action: Action::Relayed,
                original: Some("rfc822;Bob@remote.test".into()),
            },
            Report {
                recipient: "carol@local.test".into(),
                status: Status::parse("250 2.0.0 delivered to maildir", 2),
                remote_mta: None,
                action: Action::Delivered,
                original: None,
            },
        ];
        let s = String::from_utf8(build(&Notice {
            action: Action::Delivered,
            hostname: "mx.local.test",
            queue_id: "ABC",
            to: "a@b",
            arrival: 0,
            now: 60,
            reports: &reports,
            original: b"Subject: hi\r\n\r\nthe body\r\n",
            full: true,
            envid: Some("QQ314"),
        }))
        .unwrap();
        assert!(s.contains("Subject: Successful Mail Delivery Report\r\n"));
        assert!(s.contains("delivery-status\r\n\r\nOriginal-Envelope-Id: QQ314\r\nReporting-MTA: dns; mx.local.test\r\n"));
        assert!(s.contains("\r\n\r\nOriginal-Recipient: rfc822;Bob@remote.test\r\nFinal-Recipient: rfc822; bob@remote.test\r\nAction: relayed\r\nStatus: 2.0.0\r\n"));
        assert!(s.contains("Final-Recipient: rfc822; carol@local.test\r\nAction: delivered\r\n"));
        assert!(s.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nthe body\r\n"));
    }

    #[test]
    fn text_that_is_not_ascii_is_labelled_and_lines_stay_short() {
        let reports = vec![Report {
            recipient: "j\u{f6}rg@remote.test".into(),
            status: Status::parse(
                &format!("550 5.1.1 unbekannt: {}", "\u{fc}".repeat(2000)),
                5,
            ),
            remote_mta: Some("mx.remote.test".into()),
            action: Action::Failed,
            original: None,
        }];
        let s = failed_notice(&reports, b"Subject: hello\r\n\r\n");
        assert!(s.contains(
            "Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n"
        ));
        assert!(s.contains(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        ));
        assert!(s.contains("Final-Recipient: utf-8; j\u{f6}rg@remote.test\r\n"));
        assert!(
            s.split("\r\n").all(|l| l.len() <= 998),
            "a line over 998 octets"
        );
    }

    #[test]
    fn two_notices_in_one_second_have_their_own_message_id_and_boundary() {
        let field = |s: &str, name: &str| -> String {
            let at = s.find(name).expect(name);
            s[at..].lines().next().unwrap().to_string()
        };
        let notice = |action| {
            String::from_utf8(build(&Notice {
                action,
                hostname: "mx.local.test",
                queue_id: "00000000000000AB",
                to: "a@b",
                arrival: 0,
                now: 60,
                reports: &[],
                original: b"Subject: hi\r\n\r\n",
                full: false,
                envid: None,
            }))
            .unwrap()
        };
        let (a, b) = (notice(Action::Failed), notice(Action::Delayed));
        assert_ne!(field(&a, "Message-ID:"), field(&b, "Message-ID:"));
        assert_ne!(field(&a, "\tboundary="), field(&b, "\tboundary="));
        let boundary = field(&a, "\tboundary=");
        assert!(boundary.len() - "\tboundary=\"\"".len() <= 70, "{boundary}");
    }
}
