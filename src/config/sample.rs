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
