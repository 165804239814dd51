"""Attacks a plugd binary as a hostile plugin and a hostile client would, one attack at a time,
each on a fresh plugd, and prints for each: plugd's peak RSS, the CPU it spent, the latency of
another plugin's route and of /healthz meanwhile, and how the attack ended.

Run through bench/hostile.sh, which builds the binaries. Standard library only."""

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.path.join(ROOT, "target", "debug")
PLUGD = os.environ.get("PLUGD_BIN", os.path.join(BIN_DIR, "plugd"))
DURATION = float(os.environ.get("DURATION", "8"))
HOST_TOKEN = "host-token-for-the-attacks"
TICK = os.sysconf("SC_CLK_TCK")


def manifest(name, bin_name, args=(), extra=""):
    cmd = os.path.join(BIN_DIR, bin_name)
    argv = ", ".join(json.dumps(a) for a in args)
    return f'name = "{name}"\nversion = "0.0.1"\ncommand = "{cmd}"\nargs = [{argv}]\n{extra}\n'


class Plugd:
    def __init__(self, plugins, prlimit=None, flags=()):
        self.flags = list(flags)
        self.dir = tempfile.mkdtemp(prefix="plugd-hostile-")
        for name, text in plugins.items():
            os.makedirs(os.path.join(self.dir, "plugins", name))
            with open(os.path.join(self.dir, "plugins", name, "plugin.toml"), "w") as f:
                f.write(text)
        os.makedirs(os.path.join(self.dir, "plugins"), exist_ok=True)
        self.log = open(os.path.join(self.dir, "plugd.log"), "w")
        self.start(prlimit)

    def start(self, prlimit=None):
        argv = [PLUGD, "serve", "--listen", "127.0.0.1:0", "--plugins-dir", "plugins",
                "--data-dir", "data", "--runtime-dir", "run"] + self.flags
        if prlimit:
            argv = ["prlimit", f"--nofile={prlimit}:{prlimit}", "--"] + argv
        env = dict(os.environ, PLUGD_HOST_TOKEN=HOST_TOKEN, PLUGD_LOG="info")
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, text=True)
        for line in self.proc.stdout:
            if line.startswith("plugd listening on http://"):
                host, port = line.strip().rsplit("/", 1)[1].split(":")
                self.port = int(port)
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        # Under prlimit the child is prlimit, which execs plugd: the same pid.
        self.pid = self.proc.pid
        deadline = time.time() + 20
        while time.time() < deadline:
            status, _ = self.get("/healthz", timeout=2)
            if status == 200:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("plugd did not answer /healthz")
        # The victim serving marks the start of the attack.
        while time.time() < deadline:
            status, _ = self.get("/plugins/victim/echo/1", timeout=2)
            if status == 200:
                return
            time.sleep(0.05)

    def get(self, path, timeout=5, method="GET", body=None, headers=None):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, data
        except Exception as e:  # a hang or a refusal is a result here
            return None, str(e).encode()

    def state(self, plugin):
        status, body = self.get("/readyz")
        if status is None:
            return "?"
        p = json.loads(body)["plugins"].get(plugin, {})
        return f'{p.get("state")} ({p.get("reason") or "-"})'

    def rss_mib(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) // 1024
        except OSError:
            return 0
        return 0

    def cpu_seconds(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            return 0.0

    def stop(self):
        if self.proc.poll() is None:
            start = time.time()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.term_seconds = time.time() - start
        self.log.close()
        self.log_bytes = os.path.getsize(os.path.join(self.dir, "plugd.log"))
        shutil.rmtree(self.dir, ignore_errors=True)


class Watch:
    """Samples RSS and the latency of the victim's route and /healthz while an attack runs."""

    def __init__(self, plugd):
        self.plugd = plugd
        self.stop_flag = False
        self.rss = plugd.rss_mib()
        self.victim, self.health = [], []
        self.victim_fail = self.health_fail = 0
        self.cpu0 = plugd.cpu_seconds()
        self.threads = [threading.Thread(target=self.sample_rss, daemon=True),
                        threading.Thread(target=self.probe, args=("/plugins/victim/echo/1", "victim"), daemon=True),
                        threading.Thread(target=self.probe, args=("/healthz", "health"), daemon=True)]
        for t in self.threads:
            t.start()

    def sample_rss(self):
        while not self.stop_flag:
            self.rss = max(self.rss, self.plugd.rss_mib())
            time.sleep(0.1)

    def probe(self, path, which):
        while not self.stop_flag:
            start = time.time()
            status, _ = self.plugd.get(path, timeout=5)
            ms = (time.time() - start) * 1000
            if status == 200:
                getattr(self, which).append(ms)
            else:
                setattr(self, which + "_fail", getattr(self, which + "_fail") + 1)
            time.sleep(0.1)

    def finish(self):
        self.stop_flag = True
        for t in self.threads:
            t.join(timeout=10)
        self.cpu = self.plugd.cpu_seconds() - self.cpu0
        self.rss = max(self.rss, self.plugd.rss_mib())


def fmt_lat(samples, fails):
    if not samples:
        return f"none answered ({fails} failed)"
    out = f"p50 {statistics.median(samples):.1f} / max {max(samples):.0f} ms"
    return out + (f", {fails} failed" if fails else "")


RESULTS = []


def run(name, plugins, attack, prlimit=None, flags=()):
    plugins = dict(plugins)
    plugins["victim"] = manifest("victim", "plugd-testkit-echo")
    p = Plugd(plugins, prlimit, flags)
    try:
        w = Watch(p)
        outcome = attack(p)
        w.finish()
        after = p.rss_mib()
        p.stop()
        RESULTS.append((name, w.rss, after, w.cpu, fmt_lat(w.victim, w.victim_fail),
                        fmt_lat(w.health, w.health_fail), f"{p.term_seconds:.1f} s", outcome))
        print(f"{name}: done", file=sys.stderr)
    except Exception as e:
        p.proc.kill()
        RESULTS.append((name, "-", "-", "-", "-", "-", "-", f"harness error: {e}"))


def wait_state(p, plugin, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        s = p.state(plugin)
        if not s.startswith("ready") and not s.startswith("starting") and not s.startswith("handshaking"):
            return s
        time.sleep(0.2)
    return p.state(plugin)


def attack_flood(p):
    time.sleep(DURATION)
    return "flood: " + p.state("flood")[:90]


def attack_routes(p):
    return "huge: " + wait_state(p, "huge", DURATION)[:110]


def attack_hooks(p):
    deep = "[" * 70 + "1" + "]" * 70
    codes = []
    for _ in range(8):
        status, _ = p.get("/hooks/doc.save", method="POST", body=deep,
                          headers={"content-type": "application/json", "authorization": f"Bearer {HOST_TOKEN}"})
        codes.append(status)
    anon, _ = p.get("/hooks/doc.save", method="POST", body="1", headers={"content-type": "application/json"})
    time.sleep(2)
    return f"deep posts answered {sorted(set(codes))}, anonymous {anon}; guard: {p.state('guard')[:60]}"


def attack_kv(p):
    value = b"x" * (7 << 20)
    stored = 0
    for i in range(40):
        status, _ = p.get(f"/plugins/victim/kv/k{i:02}", method="PUT", body=value, timeout=30)
        stored += status == 200
    small = 0
    for i in range(80):
        status, _ = p.get(f"/plugins/victim/kv/m{i:02}", method="PUT", body=b"x" * (1 << 20), timeout=30)
        small += status == 200
    threads = [threading.Thread(target=p.get, args=("/plugins/victim/kvlist?prefix=",), kwargs={"timeout": 60}) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db = sum(os.path.getsize(os.path.join(p.dir, "data", f)) for f in os.listdir(os.path.join(p.dir, "data")))
    return f"{stored}/40 values of 7 MiB and {small}/80 of 1 MiB stored; database {db >> 20} MiB"


def attack_fds(p):
    conns = []
    for _ in range(1100):
        try:
            conns.append(socket.create_connection(("127.0.0.1", p.port), timeout=2))
        except OSError:
            break
    time.sleep(1)
    p_status, _ = p.get("/plugins/victim/crash", timeout=3)
    time.sleep(DURATION / 2)
    for c in conns:
        c.close()
    time.sleep(DURATION / 2)
    return f"{len(conns)} idle connections; after they left the victim is {p.state('victim')[:70]}"


def attack_slowloris(p):
    conns = []
    for _ in range(10000):
        try:
            s = socket.create_connection(("127.0.0.1", p.port), timeout=2)
            s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            conns.append(s)
        except OSError:
            break
    time.sleep(DURATION + 4)
    held = 0
    for s in conns:
        s.setblocking(False)
        try:
            held += s.recv(1) != b""
        except BlockingIOError:
            held += 1
        except OSError:
            pass
        s.close()
    return f"{len(conns)} half-sent heads; still open after {DURATION + 4:.0f} s: {held}"


def attack_stderr(p):
    deadline = time.time() + 120
    while time.time() < deadline:
        with open(os.path.join(p.dir, "plugd.log"), "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            if b"spewed" in f.read():
                break
        time.sleep(0.2)
    size = os.path.getsize(os.path.join(p.dir, "plugd.log"))
    return f"256 MiB on stderr; plugd's log grew to {size >> 20} MiB"


def attack_stray(p):
    return "stray: " + wait_state(p, "stray", DURATION)[:110]


def daemon_fate(pid, when):
    """Waits up to 5 s for the daemon to go; kills it if it is still there."""
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.1)
    alive = os.path.exists(f"/proc/{pid}")
    if alive:
        os.kill(pid, signal.SIGKILL)
    return f"daemon {'ALIVE' if alive else 'gone'} {when}"


def attack_setsid(p):
    status, body = p.get("/plugins/victim/daemon")
    pid = int(body)
    p.proc.kill()
    p.proc.wait()
    time.sleep(0.5)
    p.start()
    return daemon_fate(pid, "after plugd was SIGKILLed and restarted")


def attack_setsid_no_cgroups(p):
    status, body = p.get("/plugins/victim/daemon")
    pid = int(body)
    p.get("/plugins/victim/crash")
    return daemon_fate(pid, "5 s after its instance crashed")


ATTACKS = {
    "flood": lambda: run("request flood", {"flood": manifest("flood", "plugd-testkit-raw", ["flood"], '[health]\ninterval = "60s"\ntimeout = "30s"')}, attack_flood),
    "handshake": lambda: run("100,000-route handshake", {"huge": manifest("huge", "plugd-testkit-raw", ["routes"], "[restart]\nmax_restarts = 0")}, attack_routes),
    "hooks": lambda: run("deep hook payloads", {"guard": manifest("guard", "plugd-testkit-echo", [], '[env]\nECHO_HOOKS = "doc.save:veto:0:pass:closed"\n[restart]\nmax_restarts = 1')}, attack_hooks),
    "kv": lambda: run("KV 40 x 7 MiB, 8 lists", {}, attack_kv),
    "fds": lambda: run("1100 idle connections, nofile 1024", {}, attack_fds, prlimit=1024),
    "slowloris": lambda: run("10,000 half-sent heads", {}, attack_slowloris),
    "stderr": lambda: run("256 MiB on stderr", {"spew": manifest("spew", "plugd-testkit-raw", ["spew"], '[env]\nRAW_SPEW_MB = "256"')}, attack_stderr),
    "stray": lambda: run("answers with unknown ids", {"stray": manifest("stray", "plugd-testkit-raw", ["stray-ids"], "[restart]\nmax_restarts = 0")}, attack_stray),
    "setsid": lambda: run("setsid daemon, plugd SIGKILLed", {}, attack_setsid),
    "setsid-nocg": lambda: run("setsid daemon, --cgroups false", {}, attack_setsid_no_cgroups, flags=["--cgroups", "false"]),
}


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    chosen = sys.argv[1:] or list(ATTACKS)
    for name in chosen:
        ATTACKS[name]()
    print(f"plugd: {PLUGD}")
    print("| attack | peak RSS MiB | RSS after MiB | plugd CPU s | other plugin | /healthz | SIGTERM took | outcome |")
    print("|---|---|---|---|---|---|---|---|")
    for row in RESULTS:
        name, peak, after, cpu, victim, health, term, outcome = row
        cpu = f"{cpu:.1f}" if isinstance(cpu, float) else cpu
        print(f"| {name} | {peak} | {after} | {cpu} | {victim} | {health} | {term} | {outcome} |")


if __name__ == "__main__":
    main()
