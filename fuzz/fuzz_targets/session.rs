//! The server state machine fed any byte stream as command lines (and
//! DATA outcomes): a reply for everything, never a panic, never a 250 to
//! a transaction that was not opened.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::address::Mailbox;
use satchel::smtp::session::{
    Client, DataEnd, Event, NameChecks, Policy, RcptClass, Session, SessionConfig,
};

struct Local;
impl Policy for Local {
    fn classify(&self, m: &Mailbox) -> RcptClass {
        if m.domain.is_name("local.test") {
            if m.local == "alice" {
                RcptClass::LocalKnown
            } else {
                RcptClass::LocalUnknown
            }
        } else {
            RcptClass::Remote
        }
    }

    fn authenticate(&self, user: &str, password: &str) -> bool {
        user == "alice" && password == "secret"
    }
}

fuzz_target!(|input: &[u8]| {
    let cfg = SessionConfig {
        hostname: "mx.local.test".into(),
        message_size_limit: 1 << 20,
        max_recipients: 5,
        max_errors: 1000,
        max_hops: 50,
        myorigin: "example.test".into(),
        vrfy: input.first().is_some_and(|b| b & 1 == 1),
        tls_available: input.first().is_some_and(|b| b & 2 == 2),
        auth_available: true,
        auth_over_plaintext: input.first().is_some_and(|b| b & 4 == 4),
        name_checks: NameChecks {
            invalid_helo: input.first().is_some_and(|b| b & 16 == 16),
            non_fqdn_helo: input.first().is_some_and(|b| b & 32 == 32),
            non_fqdn_sender: input.first().is_some_and(|b| b & 64 == 64),
            non_fqdn_recipient: input.first().is_some_and(|b| b & 128 == 128),
        },
    };
    let auth_required = input.first().is_some_and(|b| b & 8 == 8);
    let mut s = Session::new(
        cfg,
        &Local,
        Client {
            ip: None,
            may_relay: false,
            auth_required,
        },
    );
    for line in input.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match s.command(line) {
            Event::Data(txn) => {
                assert!(!txn.rcpts.is_empty());
                assert!(txn.rcpts.len() <= 5);
                let (go, hdr) = s.data_opened("ID", "Thu, 1 Jan 1970 00:00:00 +0000");
                assert_eq!(go.code, 354);
                assert!(!hdr.replace("\r\n", "").contains(['\r', '\n']));
                let defect = None;
                if s.data_ended(DataEnd {
                    defect,
                    received_headers: line.len() % 60,
                })
                .is_none()
                {
                    let _ = s.queued("ID");
                }
            }
            Event::Reply(r) | Event::Close(r) | Event::StartTls(r) => {
                assert!((200..600).contains(&r.code))
            }
            // A refused BDAT: its chunk is skipped, an error said.
            Event::Discard(r, _) => assert!((400..600).contains(&r.code)),
        }
    }
});
