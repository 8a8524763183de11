//! The filters' changes to a message, applied to its content (pure):
//! header fields added at the end of the header section, inserted at a
//! position, changed or deleted by name and instance (SMFIR_ADDHEADER,
//! SMFIR_INSHEADER, SMFIR_CHGHEADER, as libmilter's smfi_* calls define
//! them), and the body replaced. Positions and instances count the header
//! fields the filters were shown: the client's, not the trace fields this
//! host put above them (`ours`).

/// One change to the header section, in the order the filters asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// At the end of the header section.
    Add(String, String),
    /// Before the field at this position (0: the first).
    Insert(u32, String, String),
    /// The `index`-th (from 1) field of this name: a new value, or removed
    /// when the value is empty; added when there is no such instance.
    Change(u32, String, String),
}

/// A header field as the spool keeps it: folded with CRLF and a tab or
/// space, CRLF at the end. A filter's line breaks (LF, CRLF or a lone CR)
/// only ever fold the value: a line that does not start with a blank gets
/// a tab, empty lines are dropped, so no value can end the header section
/// or start a field of its own.
pub fn field(name: &str, value: &str) -> Vec<u8> {
    let mut out = String::new();
    for (n, line) in value.split(['\r', '\n']).enumerate() {
        if n > 0 && line.trim().is_empty() {
            continue;
        }
        if n > 0 {
            out.push_str("\r\n");
            if !line.starts_with([' ', '\t']) {
                out.push('\t');
            }
        }
        out.push_str(line);
    }
    let sep = if out.starts_with([' ', '\t']) {
        ":"
    } else {
        ": "
    };
    format!("{name}{sep}{out}\r\n").into_bytes()
}

/// `content` with `edits` applied and, if given, its body replaced. The
/// first `ours` octets (our trace fields) stay first and are not counted.
pub fn apply(content: &[u8], ours: usize, edits: &[Edit], body: Option<&[u8]>) -> Vec<u8> {
    let (trace, rest) = content.split_at(ours.min(content.len()));
    let head_len = header_len(rest);
    let (head, old_body) = rest.split_at(head_len);
    let mut fields: Vec<Vec<u8>> = crate::rewrite::fields(head)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    for e in edits {
        match e {
            Edit::Add(n, v) => fields.push(field(n, v)),
            Edit::Insert(i, n, v) => {
                let at = (*i as usize).min(fields.len());
                fields.insert(at, field(n, v));
            }
            Edit::Change(i, n, v) => change(&mut fields, *i, n, v),
        }
    }
    let mut out = trace.to_vec();
    for f in &fields {
        out.extend_from_slice(f);
    }
    match body {
        Some(b) => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(old_body),
    }
    out
}

/// The length of the header section, up to (not with) the empty line.
fn header_len(rest: &[u8]) -> usize {
    if rest.starts_with(b"\r\n") {
        return 0;
    }
    rest.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(rest.len(), |i| i + 2)
}

fn change(fields: &mut Vec<Vec<u8>>, index: u32, name: &str, value: &str) {
    let named = |f: &Vec<u8>| {
        f.iter()
            .position(|&b| b == b':')
            .is_some_and(|c| f[..c].trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    let nth = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| named(f))
        .nth(index.max(1) as usize - 1)
        .map(|(i, _)| i);
    match (nth, value.is_empty()) {
        (Some(i), true) => {
            fields.remove(i);
        }
        (Some(i), false) => fields[i] = field(name, value),
        (None, true) => {}
        (None, false) => fields.push(field(name, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: ours\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\n\r\nbody\r\n";
    const OURS: usize = 16;

    fn text(edits: &[Edit], body: Option<&[u8]>) -> String {
        String::from_utf8(apply(MSG, OURS, edits, body)).unwrap()
    }

    #[test]
    fn fields_are_added_inserted_changed_and_deleted() {
        let e = |n: &str, v: &str| (n.to_string(), v.to_string());
        let (n, v) = e("X-Spam", "yes");
        assert_eq!(
            text(&[Edit::Add(n.clone(), v.clone())], None),
            "Received: ours\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\nX-Spam: yes\r\n\r\nbody\r\n"
        );
        assert_eq!(
            text(&[Edit::Insert(0, n.clone(), v.clone())], None),
            "Received: ours\r\nX-Spam: yes\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\n\r\nbody\r\n"
        );
        assert_eq!(
            text(&[Edit::Change(2, "x-a".into(), "two".into())], None),
            "Received: ours\r\nSubject: hi\r\nX-A: 1\r\nx-a: two\r\n\r\nbody\r\n"
        );
        assert_eq!(
            text(&[Edit::Change(1, "Subject".into(), String::new())], None),
            "Received: ours\r\nX-A: 1\r\nX-a: 2\r\n\r\nbody\r\n"
        );
        assert_eq!(
            text(&[Edit::Change(3, "X-A".into(), "3".into())], None),
            "Received: ours\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\nX-A: 3\r\n\r\nbody\r\n",
            "no third instance: added"
        );
        assert_eq!(
            text(
                &[Edit::Change(
                    1,
                    "Subject".into(),
                    "[SPAM] hi\n\tmore".into()
                )],
                None
            ),
            "Received: ours\r\n[SPAM]".replace("[SPAM]", "Subject: [SPAM] hi\r\n\tmore\r\n")
                + "X-A: 1\r\nX-a: 2\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn a_value_cannot_start_a_field_or_end_the_header() {
        assert_eq!(field("X", "a\nBcc: x@y"), b"X: a\r\n\tBcc: x@y\r\n");
        assert_eq!(field("X", "a\n\nbody"), b"X: a\r\n\tbody\r\n");
        assert_eq!(field("X", "a\rb\r\n\tc"), b"X: a\r\n\tb\r\n\tc\r\n");
    }

    #[test]
    fn the_body_is_replaced_and_our_trace_stays_first() {
        assert_eq!(
            text(&[], Some(b"new body\r\n")),
            "Received: ours\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\n\r\nnew body\r\n"
        );
        // A message without a header section of its own.
        let bare = b"Received: ours\r\n\r\nbody\r\n";
        let out = apply(bare, OURS, &[Edit::Add("X".into(), "y".into())], None);
        assert_eq!(out, b"Received: ours\r\nX: y\r\n\r\nbody\r\n");
    }
}
