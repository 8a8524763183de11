"""`scripts/bench --guard`: satchel plain against satchel with the door
guarded (a DNS blocklist, SPF tagging, DKIM verification and DMARC), the
same loads alternating, on loopback. The clients are untrusted (outside
relay_networks; remote.test is a relay domain, so both may send to it),
every message carries an RSA-2048 DKIM signature made by dkimpy
(`smtp-source -F`), and a dnsmasq on loopback answers every look-up: the
blocklist (not listed), SPF, the DKIM key and the DMARC record.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

LOADS = (("1 KB", 1, True), ("1 KB", 8, True), ("1 KB", 32, False))


def signed_message(work):
    """A 1 KB message signed with a new RSA-2048 key; (path, TXT record)."""
    import dkim

    key = os.path.join(work, "rsa.key")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    import base64

    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    body = b"".join(b"line %02d of the benchmark message, about sixty octets long\r\n" % i for i in range(16))
    msg = (b"From: Bench <a@bench.test>\r\nTo: x@remote.test\r\nSubject: guarded\r\n"
           b"Message-ID: <guard@bench.test>\r\n\r\n" + body)
    sig = dkim.sign(msg, b"sel", b"bench.test", open(key, "rb").read(),
                    canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"to", b"subject"])
    path = os.path.join(work, "message")
    # smtp-source -F appends CRLF to each line: give it LF lines.
    open(path, "wb").write((sig + msg).replace(b"\r\n", b"\n"))
    return path, record


def dnsmasq(work, a, record, free_port):
    port = free_port()
    chunks = ",".join(record[i:i + 250] for i in range(0, len(record), 250))
    proc = subprocess.Popen(
        [a.dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
         "--local=/test/", "--local=/arpa/",
         "--txt-record=bench.test,v=spf1 ip4:127.0.0.0/8 -all",
         f"--txt-record=sel._domainkey.bench.test,{chunks}",
         "--txt-record=_dmarc.bench.test,v=DMARC1; p=none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def compare(a, bench):
    work = tempfile.mkdtemp(prefix="satchel-bench-guard.")
    os.chmod(work, 0o755)
    message, record = signed_message(work)
    dns, dns_port = dnsmasq(work, a, record, bench.free_port)
    common = "relay_networks = 127.0.0.99/32\nrelay_domains = remote.test\n"
    guarded = (f"dns_servers = 127.0.0.1:{dns_port}\ndnsbl_zones = bl.test\nspf_policy = tag\n"
               "dkim_verify = yes\ndmarc_policy = tag\n")
    runs = []
    for name, extra in (("plain", common), ("guarded", common + guarded)):
        sink = bench.Sink(work, name)
        s = bench.Satchel(work, a.binary, sink, extra=extra, name="satchel-" + name)
        s.message_file, s.sender = message, "a@bench.test"
        runs.append((name, s, sink))
    rows, peaks = {}, {}
    try:
        for _, s, sink in runs:
            s.start()
            bench.load(s, sink, 8, 200, 1024, True)
        for size_name, sessions, reuse in LOADS:
            for rep in range(a.reps):
                order = runs if rep % 2 == 0 else runs[::-1]
                for name, s, sink in order:
                    acc, e2e, peak = bench.load(s, sink, sessions, a.small, 1024, reuse, pss_probe=True)
                    r = rows.setdefault((sessions, reuse, name), {"accepted": [], "e2e": []})
                    r["accepted"].append(acc)
                    r["e2e"].append(e2e)
                    peaks.setdefault(name, []).append(peak)
        checked = open(runs[1][1].log).read().count("dnsbl") == 0
    finally:
        for _, s, sink in runs:
            s.stop()
            sink.proc.terminate()
        dns.terminate()
    report(a, rows, peaks)
    if not checked:
        print("bench: warning: the guarded satchel logged DNSBL trouble", file=sys.stderr)


def report(a, rows, peaks):
    med = statistics.median
    print(f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bench --guard`; 1 KB messages with an "
          f"RSA-2048 DKIM signature, untrusted clients, median of {a.reps} alternating runs.\n")
    print("| load | plain: accepted / end to end msg/s | guarded: accepted / end to end msg/s | guarded/plain (e2e) |")
    print("|---|---|---|---|")
    for _, sessions, reuse in LOADS:
        p, g = rows[(sessions, reuse, "plain")], rows[(sessions, reuse, "guarded")]
        how = "-d" if reuse else "one message per connection"
        print(f"| {sessions} session(s), {how} | {med(p['accepted']):,.0f} / {med(p['e2e']):,.0f} "
              f"| {med(g['accepted']):,.0f} / {med(g['e2e']):,.0f} | {med(g['e2e']) / med(p['e2e']):.2f}× |")
    print(f"| peak PSS of the process (any load) | {max(peaks['plain']) / 1024:.1f} MB "
          f"| {max(peaks['guarded']) / 1024:.1f} MB | |")
