"""The other MTAs of `scripts/bench --peers`: Exim, OpenSMTPD and chasquid.

Each runs from its Debian package unpacked under --peers-root (scripts/bench
does `apt-get download` and `dpkg-deb -x`; installing them would remove
Postfix, whose smtp-source and smtp-sink the bench needs), in a private
mount namespace (`unshare -m`) where /etc/resolv.conf names a loopback
dnsmasq, /etc/passwd and /etc/group have the package's system users, and
fixed paths the binary cannot be told about (OpenSMTPD's /var/spool/smtpd)
are bind mounts into the bench's work directory, on the same file system
as the other spools. Nothing on the host changes and no DNS query leaves
the machine.

Every peer relays what 127.0.0.0/8 sends to the bench's smtp-sink, as
satchel and Postfix do; chasquid relays only for authenticated users, so
its load is addressed to a local alias that forwards to the remote
address (an alias expansion, then the same relaying), and it finds the
sink through an MX record in the dnsmasq (chasquid has no smarthost).
"""

import os
import shutil
import signal
import subprocess
import sys

DNS_ADDR = "127.0.0.45"


class Namespace:
    """Files bind-mounted over the host's inside a peer's mount namespace."""

    def __init__(self, work, users=()):
        self.dir = os.path.join(work, "ns")
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "resolv.conf"), "w") as f:
            f.write(f"nameserver {DNS_ADDR}\n")
        with open("/etc/passwd") as f:
            passwd = f.read()
        with open("/etc/group") as f:
            group = f.read()
        for name, uid in users:
            passwd += f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
            group += f"{name}:x:{uid}:\n"
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write(passwd)
        with open(os.path.join(self.dir, "group"), "w") as f:
            f.write(group)

    def script(self, extra=""):
        return (
            "set -e\nmount --make-rprivate /\n"
            f"mount --bind {self.dir}/resolv.conf /etc/resolv.conf\n"
            f"mount --bind {self.dir}/passwd /etc/passwd\n"
            f"mount --bind {self.dir}/group /etc/group\n" + extra + 'exec "$@"\n'
        )

    def popen(self, cmd, log, extra=""):
        """Starts cmd inside the namespace; `unshare` and `sh` exec into it,
        so the process keeps the pid returned here."""
        return subprocess.Popen(
            ["unshare", "-m", "sh", "-c", self.script(extra), "sh"] + cmd,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )


class Dnsmasq:
    """The peers' DNS: remote.test's MX is the sink's address (for chasquid),
    everything else under test/arpa is answered locally (NXDOMAIN)."""

    def __init__(self, work, dnsmasq):
        self.proc = subprocess.Popen(
            [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--port=53",
             f"--listen-address={DNS_ADDR}", "--bind-interfaces", "--no-resolv",
             "--no-hosts", "--local=/test/", "--local=/arpa/", "--local=/localhost/",
             "--mx-host=remote.test,mx.remote.test,10",
             "--host-record=mx.remote.test,127.0.0.1",
             "--host-record=localhost,127.0.0.1"],
            stdout=open(os.path.join(work, "dnsmasq.log"), "ab"),
            stderr=subprocess.STDOUT,
        )

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Peer:
    """Common start/stop; subclasses write their configuration and name the
    command. `to` is the address the load is sent to."""

    to = "x@remote.test"
    limits = ""

    def start(self):
        from bench import wait_port

        self.proc = self.ns.popen(self.command(), self.log, self.mounts())
        wait_port(self.port, self.name)
        self.pid = self.proc.pid

    def mounts(self):
        return ""

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Exim(Peer):
    name = "exim"
    limits = ("smtp_accept_max 20 → 200, smtp_connect_backlog 20 → 1024, "
              "smtp_accept_queue_per_connection 10 → 0 "
              "(else a connection's 11th message waits for a queue run), "
              "remote_max_parallel 4 → 8")

    def __init__(self, work, root, sink, free_port):
        self.dir = os.path.join(work, "exim")
        for d in ("spool", "log"):
            os.makedirs(os.path.join(self.dir, d))
            os.chown(os.path.join(self.dir, d), 60100, 60100)
        self.ns = Namespace(self.dir, [("Debian-exim", 60100)])
        self.port = free_port()
        self.binary = os.path.join(root, "usr/sbin/exim4")
        self.conf = os.path.join(self.dir, "exim.conf")
        self.log = os.path.join(self.dir, "out")
        self.proc = None
        with open(self.conf, "w") as f:
            f.write(f"""exim_path = {self.binary}
primary_hostname = exim.bench.test
spool_directory = {self.dir}/spool
log_file_path = {self.dir}/log/%slog
pid_file_path = {self.dir}/exim.pid
daemon_smtp_ports = {self.port}
local_interfaces = 127.0.0.1
hostlist relay_from_hosts = 127.0.0.0/8
acl_smtp_rcpt = acl_check_rcpt
smtp_accept_max = 200
smtp_connect_backlog = 1024
smtp_accept_queue_per_connection = 0
remote_max_parallel = 8
host_lookup =
rfc1413_hosts =
begin acl
acl_check_rcpt:
  accept hosts = +relay_from_hosts
  deny
begin routers
smarthost:
  driver = manualroute
  route_list = * 127.0.0.1
  transport = remote_smtp
  self = send
  no_more
begin transports
remote_smtp:
  driver = smtp
  port = {sink.port}
begin retry
* * F,2h,15m
""")

    def command(self):
        return [self.binary, "-C", self.conf, "-bdf"]


class OpenSMTPD(Peer):
    name = "opensmtpd"
    limits = ("smtp limit max-mails 100 → 1,000,000 (else smtp-source -d stops at "
              "100 per connection); its listen backlog of 5 is compiled in")

    def __init__(self, work, root, sink, free_port):
        self.dir = os.path.join(work, "opensmtpd")
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.spool)
        os.chmod(self.spool, 0o711)
        self.ns = Namespace(self.dir, [("opensmtpd", 60101), ("opensmtpq", 60102)])
        self.port = free_port()
        self.binary = os.path.join(root, "usr/sbin/smtpd")
        self.conf = os.path.join(self.dir, "smtpd.conf")
        self.log = os.path.join(self.dir, "out")
        self.proc = None
        with open(self.conf, "w") as f:
            f.write(f"""smtp limit max-mails 1000000
listen on 127.0.0.1 port {self.port}
action "relay" relay host smtp://127.0.0.1:{sink.port}
match from src 127.0.0.0/8 for any action "relay"
""")

    def mounts(self):
        # Its spool and privsep chroot are compiled-in paths.
        return ("mount -t tmpfs tmpfs /var/lib\nmkdir -p /var/lib/opensmtpd/empty\n"
                "mount -t tmpfs tmpfs /var/spool\nmkdir /var/spool/smtpd\n"
                f"mount --bind {self.spool} /var/spool/smtpd\n")

    def command(self):
        return [self.binary, "-d", "-f", self.conf]


class Chasquid(Peer):
    name = "chasquid"
    to = "x@chasquid.bench.test"
    limits = "none needed (backlog 4096, no per-client limit)"

    def __init__(self, work, root, sink, free_port):
        self.dir = os.path.join(work, "chasquid")
        conf = os.path.join(self.dir, "conf")
        dom = os.path.join(conf, "domains", "chasquid.bench.test")
        certs = os.path.join(conf, "certs", "chasquid.bench.test")
        for d in (dom, certs, os.path.join(self.dir, "data")):
            os.makedirs(d)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", "/CN=chasquid.bench.test",
             "-keyout", os.path.join(certs, "privkey.pem"),
             "-out", os.path.join(certs, "fullchain.pem")],
            check=True, capture_output=True,
        )
        with open(os.path.join(dom, "aliases"), "w") as f:
            f.write("x: x@remote.test\n")
        self.ns = Namespace(self.dir)
        self.port = free_port()
        self.sink_port = sink.port
        self.binary = os.path.join(root, "usr/bin/chasquid")
        self.conf = conf
        self.log = os.path.join(self.dir, "out")
        self.proc = None
        with open(os.path.join(conf, "chasquid.conf"), "w") as f:
            f.write(f"""hostname: "chasquid.bench.test"
smtp_address: "127.0.0.1:{self.port}"
submission_address: "127.0.0.1:{free_port()}"
submission_over_tls_address: "127.0.0.1:{free_port()}"
mail_delivery_agent_bin: "/bin/true"
data_dir: "{self.dir}/data"
mail_log_path: "{self.dir}/mail.log"
""")

    def command(self):
        return [self.binary, "-config_dir", self.conf,
                "-testing__outgoing_smtp_port", str(self.sink_port),
                "-logfile", os.path.join(self.dir, "chasquid.log")]


PEERS = (Exim, OpenSMTPD, Chasquid)


def fsyncs(server, send, count, tree_pids, out):
    """Runs `send(count)` with strace attached to the server's process tree
    (new children followed): the fsync-family calls per message, and how
    many of them came after the 354 and before the final 250 of the last
    message (are the 250's durable?), or None if strace saw no replies."""
    pids = tree_pids(server.pid)
    cmd = ["strace", "-f", "-qq", "-ttt", "-o", out,
           "-e", "trace=fsync,fdatasync,sync_file_range,syncfs,msync,write,writev,sendto,sendmsg",
           "-s", "24"]
    for p in pids:
        cmd += ["-p", str(p)]
    tracer = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    import time

    time.sleep(1.5)  # attached (strace prints nothing on stdout to wait for)
    send(count)
    time.sleep(3)  # the deliveries finish
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    syncs, before_250, in_data = 0, 0, False
    last_before = None  # no 354 ... 250 seen: the probe saw no SMTP replies
    with open(out, errors="replace") as f:
        for line in f:
            call = line.split(None, 2)[2] if line.count(" ") >= 2 else ""
            if call.startswith(("fsync(", "fdatasync(", "sync_file_range(", "syncfs(", "msync(")):
                syncs += 1
                if in_data:
                    before_250 += 1
            elif '"354 ' in call:
                in_data, before_250 = True, 0
            elif '"250 ' in call and in_data:
                in_data, last_before = False, before_250
    os.unlink(out)
    return syncs / count, last_before


def check_tools(root):
    missing = [p for p in ("usr/sbin/exim4", "usr/sbin/smtpd", "usr/bin/chasquid")
               if not os.path.exists(os.path.join(root, p))]
    if missing or not shutil.which("strace"):
        sys.exit(f"bench: --peers needs the unpacked packages in {root} and strace "
                 f"(missing: {missing or 'strace'}); scripts/bench --peers fetches them")
