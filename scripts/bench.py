#!/usr/bin/env python3
"""satchel side by side with Postfix, on loopback, in one run.

Called by scripts/bench (which installs what is needed and builds the
release binaries); not part of the tests: it times things on a shared
machine. Both servers run at once, each relaying to its own smtp-sink, with
their spools on the same file system; every load runs against them in turn
(satchel, Postfix, satchel, ...) for --reps repetitions, and the tables show
the median with the spread (min-max) and the ratio satchel/Postfix of the
medians.

Output: a Markdown report on stdout (and in --out), a JSON file of every
sample, and a PNG chart of accepted messages/s against sessions.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBIN = "/usr/sbin"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, what, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {what} is not listening on {port}")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def tree_pids(root):
    """root and all its descendants, from /proc."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rollup(pid, field):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kb(root):
    return sum(rollup(p, "Pss") for p in tree_pids(root))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sink:
    """Postfix's smtp-sink with a running counter (-c) read from its output."""

    def __init__(self, work, name):
        self.port = free_port()
        self.out = os.path.join(work, f"{name}.sink")
        self.proc = subprocess.Popen(
            [f"{SBIN}/smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1000"],
            stdout=open(self.out, "wb"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, "smtp-sink")

    def count(self):
        with open(self.out, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 200))
            tail = f.read().decode("ascii", "replace")
        m = re.findall(r"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0

    def wait_for(self, n, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count() >= n:
                return time.monotonic()
            time.sleep(0.002)
        return None


def overridden(defaults, extra):
    """`defaults` (satchel.conf lines) without the keys `extra` sets, then `extra`."""
    keys = {l.split("=")[0].strip() for l in extra.splitlines() if "=" in l}
    kept = [l for l in defaults.splitlines() if l.split("=")[0].strip() not in keys]
    return "\n".join(kept) + "\n" + extra


class Satchel:
    name = "satchel"

    def __init__(self, work, binary, sink, log_level="warn", extra="", name="satchel"):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.binary = binary
        self.conf = os.path.join(self.dir, "satchel.conf")
        self.log = os.path.join(self.dir, "log")
        with open(self.conf, "w") as f:
            f.write(overridden(
                f"""listen = 127.0.0.1:{self.port}
hostname = satchel.bench.test
spool_dir = {self.dir}/spool
mail_dir = {self.dir}/mail
aliases_file = {self.dir}/aliases
local_domains = satchel.bench.test
local_users = user
relay_networks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink.port}
# Postfix exempts $mynetworks from its per-client limits; so do we here.
max_connections_per_ip = 100
delivery_threads = 8
destination_concurrency_limit = 20
log_level = {log_level}
""", extra))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "serve", "-c", self.conf], stderr=open(self.log, "ab")
        )
        wait_port(self.port, "satchel")
        self.pid = self.proc.pid

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
            self.proc = None


class Postfix:
    name = "postfix"

    def __init__(self, work, sink):
        self.dir = os.path.join(work, "postfix")
        self.etc = os.path.join(self.dir, "etc")
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        self.port = free_port()
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(
                f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink.port}
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
biff = no
"""
            )
        # Debian's master.cf without chroot (the services and their limits
        # as shipped), smtpd on our port.
        services = [
            f"127.0.0.1:{self.port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("\n".join(services) + "\n")
        self.pid = None

    def start(self):
        run([f"{SBIN}/postfix", "-c", self.etc, "start"], stdout=subprocess.DEVNULL)
        wait_port(self.port, "postfix")
        with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
            self.pid = int(f.read().split()[0])

    def stop(self):
        subprocess.run([f"{SBIN}/postfix", "-c", self.etc, "stop"], stdout=subprocess.DEVNULL)
        self.pid = None


def stop_all(servers):
    """Stops every server of (server, sink) pairs, whatever one says."""
    for s, _ in servers:
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            print(f"bench: stopping {s.name}: {e}", file=sys.stderr)


def source(port, sessions, count, size, reuse, to="x@remote.test", sender="a@bench.test",
           message_file=None):
    cmd = [f"{SBIN}/smtp-source", "-s", str(sessions), "-m", str(count)]
    cmd += ["-F", message_file] if message_file else ["-l", str(size)]
    if reuse:
        cmd.append("-d")
    cmd += ["-f", sender, "-t", to, f"127.0.0.1:{port}"]
    run(cmd, stdout=subprocess.DEVNULL)


def load(server, sink, sessions, count, size, reuse, pss_probe=False):
    """One run: returns (accepted msg/s, end-to-end msg/s, peak tree PSS kB)."""
    base = sink.count()
    peak = [0]
    probe = None
    if pss_probe:
        import threading

        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], tree_pss_kb(server.pid))
                time.sleep(0.05)

        probe = threading.Thread(target=watch)
        probe.start()
    t0 = time.monotonic()
    source(server.port, sessions, count, size, reuse, getattr(server, "to", "x@remote.test"),
           getattr(server, "sender", "a@bench.test"), getattr(server, "message_file", None))
    t1 = time.monotonic()
    t2 = sink.wait_for(base + count, timeout=300)
    if probe:
        stop.set()
        probe.join()
    if t2 is None:
        print(f"bench: {server.name}: only {sink.count() - base} of {count} arrived", file=sys.stderr)
        t2 = float("inf")
    return count / (t1 - t0), count / (t2 - t0), peak[0]


def latency(server, sink, n=50):
    lat = []
    import smtplib

    for i in range(n):
        base = sink.count()
        s = smtplib.SMTP("127.0.0.1", server.port)
        s.sendmail("a@bench.test", ["x@remote.test"], b"Subject: latency %d\r\n\r\nx\r\n" % i)
        t0 = time.monotonic()
        t1 = sink.wait_for(base + 1, timeout=30)
        s.quit()
        lat.append(((t1 or float("inf")) - t0) * 1000)
    lat.sort()
    return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def summary(xs):
    return statistics.median(xs), min(xs), max(xs)


def fmt_rate(xs):
    m, lo, hi = summary(xs)
    return f"{m:,.0f} ({lo:,.0f}–{hi:,.0f})"


def ratio(a, b):
    ma, mb = statistics.median(a), statistics.median(b)
    return f"{ma / mb:.2f}×" if mb else "–"


SESSION_SCRIPT = (
    b"EHLO client.bench.test\r\nMAIL FROM:<a@bench.test>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n"
    b"Subject: one session\r\n\r\nhello\r\n.\r\nQUIT\r\n"
)


def one_session(cmd, env=None):
    """Runs `cmd` (an SMTP session on stdin/stdout) under GNU time; returns
    (wall seconds, max RSS kB, CPU seconds user+system)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    t = subprocess.run(
        ["/usr/bin/time", "-f", "%M"] + cmd,
        input=SESSION_SCRIPT,
        capture_output=True,
        env=env,
    )
    secs = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out = t.stdout.decode("latin-1")
    if " 250 " not in out.replace("\r\n", "\n ") and "\n250 " not in "\n" + out:
        raise SystemExit(f"bench: session failed: {cmd}: {out!r} {t.stderr!r}")
    kb = t.stderr.decode().strip().splitlines()[-1]
    return secs, int(kb), cpu


def fill_queue(spool, n):
    """Writes n deferred messages straight into a satchel spool, as the
    receiving half would leave them: one queue file each in queue/, the
    envelope in its 2048-byte room and the message after it."""
    later = int(time.time()) + 86400
    body = b"Received: from bench\r\nSubject: queued\r\n\r\n" + b"x" * 1000 + b"\r\n"
    for d in ("queue", "tmp", "active", "hold", "corrupt"):
        os.makedirs(os.path.join(spool, d), exist_ok=True)
    base = int(time.time() * 1e6) - n - 10
    for i in range(n):
        qid = f"{base + i:016X}"
        env = (
            f"version 2\nid {qid}\ncreated {later - 86400}\nclient 127.0.0.1\nhelo bench\n"
            f"protocol ESMTP\nbody 7BIT\nsmtputf8 no\nsize {len(body)}\nfrom <a@bench.test>\n"
            f"attempts 1\nnext-attempt {later}\nrcpt deferred <x{i}@remote.test> 451 4.4.1 bench\n"
            f"data 2048\nend\n"
        ).encode()
        with open(os.path.join(spool, "queue", qid), "wb") as f:
            f.write(env.ljust(2048, b"\n") + body)
        # satchel keeps a deferred envelope's next attempt in its mtime.
        os.utime(os.path.join(spool, "queue", qid), (later, later))


def chart(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing; no chart", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, size in zip(axes, ("1 KB", "100 KB")):
        for server, style in (("satchel", "o-"), ("postfix", "s--")):
            for reuse, alpha in ((True, 1.0), (False, 0.5)):
                pts = sorted(
                    (r["sessions"], statistics.median(r["accepted"]))
                    for r in results
                    if r["server"] == server and r["size"] == size and r["reuse"] == reuse
                )
                if pts:
                    xs, ys = zip(*pts)
                    label = f"{server}, {'-d reuse' if reuse else 'one msg/conn'}"
                    ax.plot(xs, ys, style, alpha=alpha, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32])
        ax.set_xticklabels(["1", "8", "32"])
        ax.set_xlabel("concurrent sessions (smtp-source -s)")
        ax.set_ylabel("accepted messages/s (median)")
        ax.set_title(f"{size} messages")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("satchel and Postfix on the same machine, fsync on (scripts/bench)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def dkim_keys(work, binary, kind):
    """A dkim_keys_file line for bench.test: an Ed25519 key (dkim-keygen)
    or an RSA-2048 one (openssl)."""
    d = os.path.join(work, "dkim-" + kind)
    os.makedirs(d)
    key = os.path.join(d, "key.pem")
    if kind == "ed25519":
        run([binary, "dkim-keygen", "bench.test", "ed", "-o", key], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    else:
        run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", key], stderr=subprocess.DEVNULL)
    table = os.path.join(d, "keys")
    with open(table, "w") as f:
        f.write(f"bench.test sel {key}\n")
    return f"dkim_keys_file = {table}\n"


def dkim_compare(a):
    """--dkim: satchel unsigned, signing with Ed25519 and with RSA-2048, in
    turn, at 8 sessions (1 KB and 100 KB, connections reused)."""
    work = tempfile.mkdtemp(prefix="satchel-bench-dkim.")
    os.chmod(work, 0o755)
    kinds = ["unsigned", "ed25519", "rsa-2048"]
    runs = []
    for kind in kinds:
        sink = Sink(work, kind)
        extra = "" if kind == "unsigned" else dkim_keys(work, a.binary, kind.split("-")[0])
        runs.append((kind, Satchel(work, a.binary, sink, extra=extra, name="satchel-" + kind), sink))
    rows = {}
    try:
        for _, s, sink in runs:
            s.start()
            load(s, sink, 8, 200, 1024, True)
        # Signed for real: the sink's first message carries the signature.
        for size_name, size, count in (("1 KB", 1024, a.small), ("100 KB", 102400, a.big)):
            for rep in range(a.reps):
                order = runs if rep % 2 == 0 else runs[::-1]
                for kind, s, sink in order:
                    acc, e2e, _ = load(s, sink, 8, count, size, True)
                    r = rows.setdefault((size_name, kind), {"accepted": [], "e2e": []})
                    r["accepted"].append(acc)
                    r["e2e"].append(e2e)
    finally:
        for _, s, sink in runs:
            s.stop()
            sink.proc.terminate()
    print(f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bench --dkim`; 8 sessions, "
          f"connections reused, median of {a.reps} alternating runs (min–max).\n")
    print("| size | signing | accepted msg/s | end-to-end msg/s | e2e vs unsigned |")
    print("|---|---|---|---|---|")
    for size_name in ("1 KB", "100 KB"):
        base = statistics.median(rows[(size_name, "unsigned")]["e2e"])
        for kind in kinds:
            r = rows[(size_name, kind)]
            acc, e2e = statistics.median(r["accepted"]), statistics.median(r["e2e"])
            print(f"| {size_name} | {kind} | {acc:.0f} ({min(r['accepted']):.0f}–{max(r['accepted']):.0f}) "
                  f"| {e2e:.0f} ({min(r['e2e']):.0f}–{max(r['e2e']):.0f}) | {e2e / base:.2f}× |")


PEER_LOADS = (("1 KB", 1024, 1, True), ("1 KB", 1024, 8, True), ("1 KB", 1024, 32, False),
              ("100 KB", 102400, 8, True))


def smtplib_sender(server):
    """send(n): n messages, one after another, on one smtplib session."""
    import smtplib

    def send(n):
        s = smtplib.SMTP("127.0.0.1", server.port)
        for i in range(n):
            s.sendmail("a@bench.test", [getattr(server, "to", "x@remote.test")],
                       b"Subject: durability %d\r\n\r\nx\r\n" % i)
        s.quit()

    return send


def peers_start(a, work, servers):
    """satchel, Postfix and the peers, each with its own sink, added to
    `servers` (for the caller to stop whatever happens) and started."""
    import peers

    sink = Sink(work, "sink-satchel")
    servers.append((Satchel(work, a.binary, sink), sink))
    sink = Sink(work, "sink-postfix")
    servers.append((Postfix(work, sink), sink))
    for cls in peers.PEERS:
        sink = Sink(work, "sink-" + cls.name)
        servers.append((cls(work, a.peers_root, sink, free_port), sink))
    for s, _ in servers:
        s.start()


def peers_measure(a, work, servers):
    """The loads of PEER_LOADS on every server, alternating, then the
    durability probe; returns (rows, peaks, idle, durability)."""
    import peers

    time.sleep(2)
    idle = {s.name: tree_pss_kb(s.pid) for s, _ in servers}
    for s, sink in servers:
        load(s, sink, 8, 200, 1024, True)  # warm up
    rows, peaks = {}, {}
    for size_name, size, sessions, reuse in PEER_LOADS:
        count = a.small if size == 1024 else a.big
        for rep in range(a.reps):
            order = servers if rep % 2 == 0 else servers[::-1]
            for s, sink in order:
                probe = sessions == 32
                acc, e2e, peak = load(s, sink, sessions, count, size, reuse, pss_probe=probe)
                r = rows.setdefault((size_name, sessions, reuse, s.name), {"accepted": [], "e2e": []})
                r["accepted"].append(acc)
                r["e2e"].append(e2e)
                if probe:
                    peaks.setdefault(s.name, []).append(peak)
        print(f"# {size_name} s={sessions}: " + ", ".join(
            f"{s.name} {statistics.median(rows[(size_name, sessions, reuse, s.name)]['e2e']):.0f}"
            for s, _ in servers), file=sys.stderr, flush=True)
    durability = {s.name: peers.fsyncs(s, smtplib_sender(s), 50, tree_pids, os.path.join(work, "strace"))
                  for s, _ in servers}
    return rows, peaks, idle, durability


def durable(per_message, before_250):
    if before_250 is None:
        return "not seen"
    return f"{before_250} ({'yes' if before_250 else 'no'})"


def peers_report(a, servers, rows, peaks, idle, durability):
    import peers

    names = [s.name for s, _ in servers]
    out = [f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bench --peers` on this machine "
           f"({os.cpu_count()} cores, shared); median of {a.reps} alternating runs; "
           "msg/s accepted / end to end (first submission until the sink has them all).", ""]
    out.append("| load | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for size_name, _, sessions, reuse in PEER_LOADS:
        cells = []
        for n in names:
            r = rows[(size_name, sessions, reuse, n)]
            cells.append(f"{statistics.median(r['accepted']):,.0f} / {statistics.median(r['e2e']):,.0f}")
        how = "-d (reuse)" if reuse else "one message per connection"
        out.append(f"| {size_name}, {sessions} session(s), {how} | " + " | ".join(cells) + " |")
    out.append("| peak PSS of the process tree, 32 sessions | "
               + " | ".join(f"{statistics.median(peaks[n]) / 1024:.1f} MB" for n in names) + " |")
    out.append("| PSS of the process tree, idle | " + " | ".join(f"{idle[n] / 1024:.1f} MB" for n in names) + " |")
    out.append("| fsync-family calls per message (strace, 50 messages) | "
               + " | ".join(f"{durability[n][0]:.2f}" for n in names) + " |")
    out.append("| of them between DATA's 354 and its 250 (is the 250 durable?) | "
               + " | ".join(durable(*durability[n]) for n in names) + " |")
    out.append("")
    out.append("Limits raised for loopback load: satchel `max_connections_per_ip = 100`; Postfix none; "
               + "; ".join(f"{c.name}: {c.limits}" for c in peers.PEERS) + ".")
    return "\n".join(out) + "\n"


def peers_compare(a):
    """--peers: satchel, Postfix, Exim, OpenSMTPD and chasquid on PEER_LOADS."""
    work = tempfile.mkdtemp(prefix="satchel-bench-peers.")
    os.chmod(work, 0o755)
    import peers

    peers.check_tools(a.peers_root)
    dns, servers = peers.Dnsmasq(work, a.dnsmasq), []
    try:
        peers_start(a, work, servers)
        report = peers_report(a, servers, *peers_measure(a, work, servers))
    finally:
        stop_all(servers)
        for _, sink in servers:
            sink.proc.terminate()
        dns.stop()
    print(report, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small", type=int, default=1000, help="messages per 1 KB run")
    ap.add_argument("--big", type=int, default=200, help="messages per 100 KB run")
    ap.add_argument("--queue", type=int, default=100000, help="messages for the queue test")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/satchel"))
    ap.add_argument("--binary-notls", default=None)
    ap.add_argument("--out", default=None, help="write the Markdown report here too")
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--dkim", action="store_true",
                    help="only satchel: unsigned against DKIM signing (Ed25519, RSA-2048)")
    ap.add_argument("--peers-root", default=None,
                    help="also Exim, OpenSMTPD and chasquid, unpacked under this root")
    ap.add_argument("--dnsmasq", default="/usr/sbin/dnsmasq")
    ap.add_argument("--guard", action="store_true",
                    help="only satchel: plain against DNSBL, SPF, DKIM and DMARC checks on")
    a = ap.parse_args()
    if a.dkim:
        dkim_compare(a)
        return
    if a.guard:
        import guardbench

        guardbench.compare(a, sys.modules[__name__])
        return
    if a.peers_root:
        a.peers_root = os.path.abspath(a.peers_root)  # exim_path must be absolute
        peers_compare(a)
        return

    work = tempfile.mkdtemp(prefix="satchel-bench.")
    os.chmod(work, 0o755)
    sink_s, sink_p = Sink(work, "satchel"), Sink(work, "postfix")
    sat = Satchel(work, a.binary, sink_s)
    pf = Postfix(work, sink_p)
    servers = [(sat, sink_s), (pf, sink_p)]
    report = []
    samples = {}

    def emit(line=""):
        print(line, flush=True)
        report.append(line)

    try:
        for s, _ in servers:
            s.start()
        time.sleep(2)
        idle = {s.name: tree_pss_kb(s.pid) for s, _ in servers}
        idle_rss = rss_kb(sat.pid)

        # Idle connections: RSS per connection held open (satchel).
        conns = []
        for _ in range(100):
            c = socket.create_connection(("127.0.0.1", sat.port))
            c.recv(200)
            conns.append(c)
        time.sleep(1)
        rss_100 = rss_kb(sat.pid)
        for c in conns:
            c.close()
        time.sleep(0.5)

        # Warm both up (Postfix spawns its processes, caches fill).
        for s, sink in servers:
            load(s, sink, 8, 200, 1024, True)

        results = []
        peaks = {"satchel": [], "postfix": []}
        loads = [
            (size_name, size, count, sessions, reuse)
            for (size_name, size, count) in (("1 KB", 1024, a.small), ("100 KB", 102400, a.big))
            for sessions in (1, 8, 32)
            for reuse in (True, False)
        ]
        for size_name, size, count, sessions, reuse in loads:
            rows = {}
            for rep in range(a.reps):
                order = servers if rep % 2 == 0 else servers[::-1]
                for s, sink in order:
                    probe = sessions == 32 and size == 1024
                    acc, e2e, peak = load(s, sink, sessions, count, size, reuse, pss_probe=probe)
                    r = rows.setdefault(
                        s.name,
                        {
                            "server": s.name,
                            "size": size_name,
                            "sessions": sessions,
                            "reuse": reuse,
                            "messages": count,
                            "accepted": [],
                            "e2e": [],
                        },
                    )
                    r["accepted"].append(acc)
                    r["e2e"].append(e2e)
                    if probe:
                        peaks[s.name].append(peak)
            results.extend(rows.values())
            print(
                f"# {size_name} s={sessions} {'-d' if reuse else '  '}: "
                + ", ".join(f"{n} {statistics.median(r['accepted']):.0f}/{statistics.median(r['e2e']):.0f}" for n, r in rows.items()),
                file=sys.stderr,
                flush=True,
            )

        lat = {}
        for s, sink in servers:
            lat[s.name] = latency(s, sink)

        # One session under inetd (satchel) against Postfix's sendmail -bs.
        inetd = {"satchel": [], "postfix": []}
        for _ in range(20):
            inetd["satchel"].append(one_session([sat.binary, "inetd", "-c", sat.conf]))
            inetd["postfix"].append(
                one_session([f"{SBIN}/sendmail", "-C", pf.etc, "-bs"], env=dict(os.environ, MAIL_CONFIG=pf.etc))
            )
    finally:
        stop_all(servers)

    # Start-up and `queue list` with a large queue (satchel only).
    qdir = os.path.join(work, "queue100k")
    os.makedirs(qdir)
    qsat = Satchel(qdir, a.binary, sink_s, log_level="info")
    fill_queue(os.path.join(qsat.dir, "spool"), a.queue)
    run(["sync"])
    # Like the loads: several runs, the median and the spread.
    list_runs = []
    for _ in range(a.reps):
        lst = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", a.binary, "queue", "-c", qsat.conf, "list"],
            capture_output=True,
        )
        secs, kb = lst.stderr.decode().strip().splitlines()[-1].split()
        list_runs.append((float(secs), int(kb)))
    list_secs = statistics.median(r[0] for r in list_runs)
    list_kb = max(r[1] for r in list_runs)
    list_spread = f"{min(r[0] for r in list_runs):.2f}–{max(r[0] for r in list_runs):.2f} s"
    listed = sum(1 for line in lst.stdout.decode().splitlines() if re.match(r"^[0-9A-F]{16} ", line))
    t0 = time.monotonic()
    qsat.start()
    listening = time.monotonic() - t0
    scanned = None
    while time.monotonic() - t0 < 120:
        with open(qsat.log) as f:
            if "queue scan:" in f.read():
                scanned = time.monotonic() - t0
                break
        time.sleep(0.01)
    q_rss = rss_kb(qsat.pid)
    qsat.stop()
    sink_s.proc.terminate()
    sink_p.proc.terminate()

    size_tls = os.path.getsize(a.binary)
    size_notls = os.path.getsize(a.binary_notls) if a.binary_notls else None
    pf_bins = ["/usr/sbin/postfix", "/usr/sbin/sendmail", "/usr/sbin/postdrop", "/usr/sbin/postqueue"]
    pf_bins += [os.path.join("/usr/lib/postfix/sbin", f) for f in os.listdir("/usr/lib/postfix/sbin")]
    pf_bins += [os.path.join("/usr/lib/postfix", f) for f in os.listdir("/usr/lib/postfix") if f.endswith(".so")]
    pf_size = sum(os.path.getsize(p) for p in pf_bins if os.path.isfile(p))

    def row(label, sat_v, pf_v, r):
        emit(f"| {label} | {sat_v} | {pf_v} | {r} |")

    emit(f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bench` on this machine "
         f"({os.cpu_count()} cores, shared); median of {a.reps} alternating runs, (min–max).")
    emit()
    emit("| accepted msg/s (smtp-source) | satchel | Postfix | satchel/Postfix |")
    emit("|---|---|---|---|")
    def postfix_twin(r_s):
        """Postfix's result for the load of satchel's result r_s."""
        return next(
            r for r in results
            if r["server"] == "postfix" and (r["size"], r["sessions"], r["reuse"]) == (r_s["size"], r_s["sessions"], r_s["reuse"])
        )

    def rate_rows(metric, loads, label):
        """One row per satchel result in `loads`, beside Postfix's twin."""
        for r_s in loads:
            r_p = postfix_twin(r_s)
            row(label(r_s), fmt_rate(r_s[metric]), fmt_rate(r_p[metric]), ratio(r_s[metric], r_p[metric]))

    satchel_results = [r for r in results if r["server"] == "satchel"]
    rate_rows("accepted", satchel_results,
              lambda r: f"{r['size']}, {r['sessions']} session(s), "
                        f"{'-d (reuse)' if r['reuse'] else 'one message per connection'}")
    emit()
    emit("| end-to-end msg/s (first submission until the sink has them all) | satchel | Postfix | satchel/Postfix |")
    emit("|---|---|---|---|")
    rate_rows("e2e", [r for r in satchel_results if r["reuse"]],
              lambda r: f"{r['size']}, {r['sessions']} session(s), -d")
    emit()
    emit("| footprint and latency | satchel | Postfix | satchel/Postfix |")
    emit("|---|---|---|---|")
    row("250 → arrival at the sink, single messages: median / p99",
        f"{lat['satchel'][0]:.1f} / {lat['satchel'][1]:.1f} ms",
        f"{lat['postfix'][0]:.1f} / {lat['postfix'][1]:.1f} ms",
        f"{lat['satchel'][0] / lat['postfix'][0]:.2f}×")
    ps, pp = statistics.median(peaks["satchel"]), statistics.median(peaks["postfix"])
    row("peak PSS of the process tree, 32 sessions, 1 KB", f"{ps / 1024:.1f} MB", f"{pp / 1024:.1f} MB", f"{ps / pp:.2f}×")
    row("PSS of the process tree, idle", f"{idle['satchel'] / 1024:.1f} MB", f"{idle['postfix'] / 1024:.1f} MB",
        f"{idle['satchel'] / idle['postfix']:.2f}×")
    row("RSS idle (satchel: one process)", f"{idle_rss / 1024:.1f} MB", "–", "–")
    row("RSS per idle connection (100 open)", f"{(rss_100 - idle_rss) / 100:.0f} kB", "–", "–")
    notls = f", {size_notls:,} B without tls" if size_notls else ""
    row("release binary, stripped", f"{size_tls:,} B with tls{notls}", f"{pf_size:,} B (daemons, tools, libpostfix)",
        f"{size_tls / pf_size:.2f}×")
    si = [x[0] for x in inetd["satchel"]]
    pi = [x[0] for x in inetd["postfix"]]
    sm = [x[1] for x in inetd["satchel"]]
    pm = [x[1] for x in inetd["postfix"]]
    sc = sum(x[2] for x in inetd["satchel"])
    pc = sum(x[2] for x in inetd["postfix"])
    n = len(inetd["satchel"])
    row("one session start to QUIT: `satchel inetd` vs `sendmail -bs`, wall time / max RSS",
        f"{statistics.median(si) * 1000:.1f} ms / {statistics.median(sm) / 1024:.1f} MB",
        f"{statistics.median(pi) * 1000:.1f} ms / {statistics.median(pm) / 1024:.1f} MB",
        f"{statistics.median(si) / max(statistics.median(pi), 0.001):.2f}× / {statistics.median(sm) / statistics.median(pm):.2f}×")
    row(f"the same session: CPU time, user+system of the whole process tree (mean of {n})",
        f"{sc / n * 1000:.1f} ms", f"{pc / n * 1000:.1f} ms", f"{sc / max(pc, 0.001):.2f}×")
    emit()
    emit(f"| {a.queue:,} queued messages (satchel) | value |")
    emit("|---|---|")
    emit(
        f"| `satchel queue list`: wall time (median of {len(list_runs)}, min–max) / max RSS "
        f"| {list_secs:.2f} s ({list_spread}) / {list_kb / 1024:.1f} MB ({listed:,} listed) |"
    )
    emit(f"| daemon start-up until listening | {listening:.2f} s |")
    emit(f"| daemon start-up until the queue is scanned and scheduled | "
         f"{'%.2f s' % scanned if scanned is not None else 'not seen in 120 s'} |")
    emit(f"| daemon RSS with the queue scheduled | {q_rss / 1024:.1f} MB "
         f"(≈ {(q_rss - idle_rss) * 1024 / a.queue:.0f} bytes per queued message above idle) |")

    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(report) + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "peaks": peaks, "latency": lat, "inetd": inetd, "idle": idle}, f, indent=1)
    if a.png:
        chart(results, a.png)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
