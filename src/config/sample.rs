//! The reference configuration, etc/satchel.conf, written from the
//! settings table: a header, then every setting commented out with its
//! documentation and default. Pure text; never writes the file itself (a
//! unit test compares it, or with SATCHEL_WRITE_SAMPLE=1 rewrites it).

use super::{Reload, SETTINGS};

/// The paragraph at the top of etc/satchel.conf.
const HEADER: &str = "\
# satchel.conf — the satchel configuration: every setting, with its default.
#
# Format: `key = value`, one setting per line, as in Postfix's main.cf. A
# line starting with `#` is a comment; blank lines are ignored. A key may be
# set only once. Lists are separated by commas or white space.
#   Times:  a number with a unit: ms, s, m, h, d, w (500ms, 30s, 5m, 1h,
#           5d); a bare number is seconds; fractions are allowed (1.5h).
#   Sizes:  octets (10485760), or with k, M or G (binary: 10M = 10485760).
#   Yes/no: yes/no, true/false, on/off, 1/0.
#
# Where satchel looks: `-c FILE`, else $SATCHEL_CONFIG, else
# /etc/satchel/satchel.conf (when it exists), else the built-in defaults.
# An unknown key or a bad value stops satchel with exit status 2 and
# `FILE:LINE: what is wrong`. `satchel check-config -c FILE` validates a
# file (and the aliases file it names) and prints the effective settings.
# `satchel serve` re-reads this file and the aliases on SIGHUP; a setting
# marked \"Needs a restart to change\" keeps its old value until a restart.
#
# Every setting below is commented out: as shipped, this file IS the
# defaults, and it works from the top of a checkout. Relative paths are
# relative to the working directory.
";

/// The complete etc/satchel.conf: the header, then each section of the
/// table under its heading, each setting commented out.
pub fn sample_file() -> String {
    let mut out = String::from(HEADER);
    let mut section = "";
    for s in SETTINGS {
        if s.section() != section {
            section = s.section();
            let heading = format!("# ---- {section} ");
            out.push_str(&format!("\n{heading:-<78}\n"));
        }
        out.push('\n');
        for line in s.doc().lines() {
            out.push_str(&format!("#{line}\n"));
        }
        if s.reload == Reload::Restart {
            out.push_str("# Needs a restart to change.\n");
        }
        let default = if s.default().is_empty() {
            "(empty)"
        } else {
            s.default()
        };
        out.push_str(&format!("# Default: {default}\n"));
        out.push_str(format!("#{} = {}", s.name(), s.default()).trim_end());
        out.push('\n');
    }
    out
}

/// `satchel.conf(5)` in man(7) markup, from the same table: every
/// setting with its default, documentation and whether it needs a
/// restart. Written to etc/man/satchel.conf.5 by the test that checks it.
pub fn man_page(date: &str) -> String {
    let mut out = format!(
        ".TH SATCHEL.CONF 5 \"{date}\" \"satchel {}\" \"File Formats\"\n\
         .SH NAME\nsatchel.conf \\- configuration of the satchel mail transfer agent\n\
         .SH DESCRIPTION\n\
         satchel reads \\fB/etc/satchel/satchel.conf\\fR (or the file of \\fB\\-c\\fR or \\fBSATCHEL_CONFIG\\fR).\n\
         Each line is \\fIkey\\fR = \\fIvalue\\fR; lines starting with # are comments.\n\
         A relative path is taken from the file's directory.\n\
         A file under /etc gets the installed defaults: spool /var/spool/satchel,\n\
         mbox mailboxes in /var/mail, /etc/aliases, and the account satchel.\n\
         A bad line stops satchel with \\fIFILE\\fR:\\fILINE\\fR and what is wrong.\n\
         SIGHUP reads the file again; settings marked so need a restart.\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut section = "";
    for s in SETTINGS {
        if s.section() != section {
            section = s.section();
            out.push_str(&format!(".SH \"{}\"\n", section.to_uppercase()));
        }
        let default = if s.default().is_empty() {
            "(empty)"
        } else {
            s.default()
        };
        out.push_str(&format!(".TP\n.B {}\n", roff(s.name())));
        let text: Vec<&str> = s.doc().lines().map(str::trim).collect();
        out.push_str(&roff_lines(&text.join(" ")));
        out.push_str(&format!(".br\nDefault: {}", roff(default)));
        if s.reload == Reload::Restart {
            out.push_str(" (needs a restart to change)");
        }
        out.push('\n');
    }
    out.push_str(".SH SEE ALSO\n.BR satchel (8),\n.BR aliases (5)\n");
    out
}

/// Text made safe for roff: backslashes and leading dots or quotes.
fn roff(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// A paragraph, one sentence a line (man(7)'s convention), none starting
/// with a control character.
fn roff_lines(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        if word.ends_with('.') && word.len() > 2 {
            push_line(&mut out, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        push_line(&mut out, &line);
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    let l = roff(line);
    if l.starts_with('.') || l.starts_with('\'') {
        out.push_str("\\&");
    }
    out.push_str(&l);
    out.push('\n');
}
