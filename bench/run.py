#!/usr/bin/env python3
"""cloud-mdir-sync benchmarks: speed, cost and scale, beside the services' ceilings.

Runs the release binaries (build them first: `cargo build --release --workspace
--bins`) against the emulated cloud, only through the command line, and prints a
table plus one JSON object per figure:
    {"name", "value", "unit", "ceiling"?, "messages", "scale"}

    python3 bench/run.py [--quick] [--only NAME[,NAME]] [--json FILE] [--bin-dir DIR]

Scenarios (full size; --quick divides every mailbox by 10):
  P1        Office365 initial sync, 10,000 messages, --latency-ms 20, real quota
  P1-Gmail  Gmail initial sync, 10,000 messages, --quota x10 + CMS_QUOTA_SCALE=10
  P2..P5    idle poll, warm restart, memory, local -> cloud, at 10,000 and 100,000
            (the 100,000 world is 20 Office365 accounts of 5,000 messages)
  P6        cloud -> local at the default poll interval
  Routing   a List-ID direct_message over the 100,000 world

Figures are reported, never asserted, except counts that must be exact: the
harness exits 1 when a figure is missing or not a number.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
GRAPH_VALUE = "graph GET /me/messages/{id}/$value"
GMAIL_GET = "gmail GET /users/{id}/messages/{id}"

FIGURES = []


def figure(name, value, unit, messages, scale, ceiling=None):
    """Records one figure (and prints it as it comes)."""
    f = {"name": name, "value": value, "unit": unit, "messages": messages, "scale": scale}
    if ceiling is not None:
        f["ceiling"] = ceiling
    FIGURES.append(f)
    shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
    print(f"  {name:<44} {shown:>14} {unit:<12}" + (f" (ceiling {ceiling:,})" if ceiling is not None else ""),
          file=sys.stderr, flush=True)


class Emulator:
    """cms-fakecloud as a child process, with its control routes."""

    def __init__(self, bins, workdir, args):
        self.out = open(os.path.join(workdir, "fakecloud.out"), "w+")
        self.err = open(os.path.join(workdir, "fakecloud.log"), "w")
        self.proc = subprocess.Popen([os.path.join(bins, "cms-fakecloud"), "--auto-approve", *args],
                                     stdout=self.out, stderr=self.err)
        deadline = time.time() + 600
        while time.time() < deadline:
            self.out.seek(0)
            m = re.search(r"^listening on (\S+)", self.out.read(), re.M)
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the emulator exited; see {self.err.name}")
            time.sleep(0.1)
        raise SystemExit("bench: the emulator did not start")

    def ctl(self, method, route, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/_control/{route}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read() or b"null")

    def stats(self):
        return self.ctl("GET", "stats")

    def reset(self):
        self.ctl("DELETE", "stats")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def route_requests(stats, name):
    return stats["routes"].get(name, {}).get("requests", 0)


def count_files(maildirs):
    n = 0
    for md in maildirs:
        for sub in ("new", "cur"):
            try:
                with os.scandir(os.path.join(md, sub)) as it:
                    n += sum(1 for _ in it)
            except FileNotFoundError:
                pass
    return n


class Proc:
    """Counters of a running process from /proc."""

    def __init__(self, pid):
        self.pid = pid

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime

    def write_bytes(self):
        with open(f"/proc/{self.pid}/io") as f:
            return int(re.search(r"^write_bytes: (\d+)", f.read(), re.M).group(1))

    def status_kb(self, key):
        with open(f"/proc/{self.pid}/status") as f:
            return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


class World:
    """A HOME, a cms.cfg and an emulator with populated mailboxes."""

    def __init__(self, args, name, accounts, emu_args, poll=15, router=False, quota_scale=None):
        self.name = name
        self.bins = args.bin_dir
        self.dir = tempfile.mkdtemp(prefix=f"cms-bench-{name}-", dir=args.work_dir)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)
        self.accounts = accounts  # [(kind, user, folder, n)]
        self.messages = sum(a[3] for a in accounts)
        populate = []
        for kind, user, folder, n in accounts:
            populate += [f"--populate-{'o365' if kind == 'o365' else 'gmail'}", f"{user}:{folder}:{n}"]
        t = time.time()
        self.emu = Emulator(self.bins, self.dir, [*emu_args, *populate])
        print(f"bench: {name}: {self.messages:,} messages populated in {time.time() - t:.0f} s",
              file=sys.stderr, flush=True)
        self.maildir = os.path.join(self.home, "mail", "inbox")
        self.calls = os.path.join(self.dir, "router-calls")
        self.quota_scale = quota_scale
        self.write_config(poll, router)
        browser = os.path.join(self.dir, "browser.sh")
        with open(browser, "w") as f:
            # Follows the login page's redirects through every account's
            # login (more than urllib's default of 10 redirects).
            f.write("#!/bin/sh\nexec /usr/bin/python3 -c 'import sys, urllib.request as u; "
                    "h = u.HTTPRedirectHandler(); h.max_redirections = h.max_repeats = 10000; "
                    "u.build_opener(h).open(sys.argv[1], timeout=300).read()' \"$1\"\n")
        os.chmod(browser, 0o755)
        self.env = dict(os.environ, HOME=self.home, CMS_CLOUD_BASE_URL=self.emu.url,
                        CMS_OAUTH_LISTEN="127.0.0.1:0", BROWSER=browser,
                        RUST_LOG="info,cloud_mdir_sync::daemon=debug")
        self.env.pop("NOTIFY_SOCKET", None)
        if quota_scale:
            self.env["CMS_QUOTA_SCALE"] = str(quota_scale)
        self.log_n = 0

    def write_config(self, poll, router):
        lines = ['inbox = MailDir("~/mail/inbox")', 'lists = MailDir("~/mail/lists")']
        for i, (kind, user, folder, _) in enumerate(self.accounts):
            if kind == "o365":
                lines.append(f'b{i} = Office365("{folder}", Office365_Account(user="{user}"))')
            else:
                lines.append(f'b{i} = GMail("{folder}", GMail_Account(user="{user}"))')
            lines.append(f"b{i}.poll_interval = {poll}")
        if router:
            # Counts its calls: one byte per call appended to a file.
            lines += ["import os",
                      f"_calls = os.open({self.calls!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)",
                      "def direct_message(msg):",
                      "    os.write(_calls, b'.')",
                      "    if msg.get_header('List-ID'):",
                      "        return lists",
                      "    return inbox",
                      "cfg.direct_message = direct_message"]
        self.cfg = os.path.join(self.dir, "cms.cfg")
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")

    def maildirs(self):
        return [self.maildir, os.path.join(self.home, "mail", "lists")]

    def files(self):
        return count_files(self.maildirs())

    def router_calls(self):
        try:
            return os.path.getsize(self.calls)
        except FileNotFoundError:
            return 0

    def _spawn(self, extra):
        """Starts the binary; its output reaches the log file through a pipe
        copied by this process, so the daemon's write_bytes count its state
        and maildir writes, not the log the harness reads."""
        self.log_n += 1
        log = open(os.path.join(self.dir, f"daemon-{self.log_n}.log"), "w+")
        p = subprocess.Popen([os.path.join(self.bins, "cloud-mdir-sync"), "-c", self.cfg, *extra],
                             env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def copy():
            for line in iter(p.stdout.readline, b""):
                log.write(line.decode(errors="replace"))
                log.flush()

        p.copier = threading.Thread(target=copy, daemon=True)
        p.copier.start()
        return p, log

    def once(self, sampler=None):
        """`--once`: wall seconds, CPU seconds (with children), peak RSS KiB, exit code."""
        t = time.time()
        p, log = self._spawn(["--once"])
        stop = threading.Event()
        th = None
        if sampler:
            th = threading.Thread(target=sampler, args=(stop, t), daemon=True)
            th.start()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t
        p.copier.join(timeout=30)
        stop.set()
        if th:
            th.join()
        if p.returncode != 0:
            log.seek(0)
            tail = log.read()[-3000:]
            raise SystemExit(f"bench: {self.name}: --once exited {p.returncode}:\n{tail}")
        return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "log": log}

    def start(self):
        return Daemon(self, *self._spawn([]))

    def close(self):
        self.emu.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    """The daemon in continuous mode; cycles counted from its log."""

    def __init__(self, world, proc, log):
        self.world, self.proc, self.log = world, proc, log
        self.p = Proc(proc.pid)
        self.started = time.time()

    def cycles(self):
        with open(self.log.name) as f:
            return sum(1 for line in f if " sync: " in line)

    def wait_cycles(self, n, timeout=3600):
        deadline = time.time() + timeout
        while self.cycles() < n:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the daemon exited; see {self.log.name}")
            if time.time() > deadline:
                raise SystemExit(f"bench: no cycle after {timeout} s; see {self.log.name}")
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def progress_sampler(world, value_route, total, marks):
    """Watches downloads (emulator) and files (maildir) during an initial sync."""

    def run(stop, t0):
        pending = [25, 50, 75]
        while not stop.is_set():
            files = world.files()
            if files and "first_file" not in marks:
                marks["first_file"] = time.time() - t0
            try:
                done = route_requests(world.emu.stats(), value_route)
            except OSError:
                done = 0
            while pending and done * 100 >= pending[0] * total:
                marks[pending.pop(0)] = files
            time.sleep(0.1)

    return run


def p1(args, scale):
    n = 10_000 // scale
    w = World(args, "p1", [("o365", "p1@contoso.example", "Inbox", n)], ["--latency-ms", "20", "--seed", "11"])
    try:
        marks = {}
        r = w.once(progress_sampler(w, GRAPH_VALUE, n, marks))
        s = w.emu.stats()
        mbox = s["mailboxes"].get("graph p1@contoso.example", {})
        reqs = mbox.get("charged", s["requests"])
        figure("P1 wall time", round(r["wall"], 2), "s", n, scale)
        figure("P1 messages per second", round(n / r["wall"], 1), "msg/s", n, scale)
        for route, v in sorted(s["routes"].items()):
            if route.startswith("graph "):
                figure(f"P1 requests {route}", v["requests"], "requests", n, scale)
        figure("P1 requests (mailbox, all routes)", reqs, "requests", n, scale)
        figure("P1 429s served", s["throttled"], "responses", n, scale, ceiling=0)
        figure("P1 daemon CPU", round(r["cpu"], 2), "s", n, scale)
        figure("P1 CPU per message", round(r["cpu"] * 1000 / n, 3), "ms", n, scale, ceiling=0.2)
        figure("P1 peak RSS", round(r["maxrss_kb"] / 1024, 1), "MiB", n, scale)
        # Fraction of the concurrency ceiling: each request holds one of 4 slots for 20 ms.
        figure("P1 rate vs ceiling", round(reqs * 0.020 / 4 / r["wall"] * 100, 1), "%", n, scale, ceiling=100)
        figure("P1 time to first file", round(marks.get("first_file", r["wall"]), 2), "s", n, scale)
        for pct in (25, 50, 75):
            figure(f"P1 files at {pct}% of downloads", marks.get(pct, 0), "files", n, scale)
        figure("P1 files at the end", w.files(), "files", n, scale)
        value_bytes = s["routes"].get(GRAPH_VALUE, {}).get("bytes_out", 0)
        figure("P1 mean message size", round(value_bytes / max(1, n) / 1024, 1), "KiB", n, scale)
        return s
    finally:
        w.close()


def p1_gmail(args, scale):
    n = 10_000 // scale
    w = World(args, "p1g", [("gmail", "p1@gmail.example", "INBOX", n)], ["--quota", "x10", "--seed", "12"],
              quota_scale=10)
    try:
        marks = {}
        r = w.once(progress_sampler(w, GMAIL_GET, n, marks))
        s = w.emu.stats()
        units = s["mailboxes"].get("gmail p1@gmail.example", {}).get("charged", 0)
        per_msg = units / max(1, n)
        ceiling_rate = 15_000 / 5  # messages per minute at the 5-unit floor
        rate = n / (r["wall"] / 60)
        figure("P1-Gmail wall time", round(r["wall"], 2), "s", n, 10)
        figure("P1-Gmail quota units per message", round(per_msg, 2), "units", n, 10, ceiling=5)
        figure("P1-Gmail rate vs quota ceiling", round(rate / (15_000 / max(per_msg, 1e-9)) * 100, 1), "%", n, 10,
               ceiling=100)
        figure("P1-Gmail messages per minute", round(rate), "msg/min", n, 10, ceiling=int(ceiling_rate))
        figure("P1-Gmail rate-limit answers", s["throttled"], "responses", n, 10, ceiling=0)
        figure("P1-Gmail daemon CPU", round(r["cpu"], 2), "s", n, 10)
        figure("P1-Gmail files at the end", w.files(), "files", n, 10)
    finally:
        w.close()


def steady(args, scale, label, n_total, accounts, want):
    """P2..P5 (and Routing at 100,000) over one synced world."""
    accts = [("o365", f"u{i}@contoso.example", "Inbox", n_total // accounts) for i in range(accounts)]
    w = World(args, f"steady{label}", accts, ["--latency-ms", "20", "--seed", "13"], poll=1)
    n = w.messages
    try:
        r = w.once()
        figure(f"P4 peak RSS, initial sync @{label}", round(r["maxrss_kb"] / 1024, 1), "MiB", n, scale,
               ceiling=30 if n_total <= 10_000 else 100)
        figure(f"initial sync wall time @{label}", round(r["wall"], 1), "s", n, scale)
        if "P2" in want or "P4" in want or "P5" in want:
            idle_and_local(w, label, n, scale, accounts, quick=scale > 1)
        if "P3" in want:
            w.emu.reset()
            r = w.once()
            s = w.emu.stats()
            figure(f"P3 warm restart to first cycle @{label}", round(r["wall"], 2), "s", n, scale, ceiling=1)
            figure(f"P3 warm restart requests @{label}", s["requests"], "requests", n, scale)
            figure(f"P3 warm restart downloads @{label}", route_requests(s, GRAPH_VALUE), "downloads", n, scale,
                   ceiling=0)
            figure(f"P3 warm restart CPU @{label}", round(r["cpu"], 2), "s", n, scale)
        if "Routing" in want:
            w.write_config(1, router=True)
            r = w.once()
            figure(f"Routing full re-route calls @{label}", w.router_calls(), "calls", n, scale)
            figure(f"Routing CPU of a cycle that routes everything @{label}", round(r["cpu"], 2), "s", n, scale)
            d = w.start()
            try:
                d.wait_cycles(2, 600)
                c0, k0 = w.router_calls(), d.cycles()
                time.sleep(5)
                c1, k1 = w.router_calls(), d.cycles()
                figure(f"Routing Python calls per idle cycle @{label}", round((c1 - c0) / max(1, k1 - k0)), "calls",
                       n, scale, ceiling=0)
            finally:
                d.stop()
    finally:
        w.close()


def idle_and_local(w, label, n, scale, folders, quick):
    d = w.start()
    try:
        d.wait_cycles(1, 3600)
        time.sleep(3)
        # P2: idle polls (poll_interval 1 s).
        w.emu.reset()
        k0, cpu0, wb0 = d.cycles(), d.p.cpu_s(), d.p.write_bytes()
        time.sleep(10 if quick else 30)
        k1, cpu1, wb1 = d.cycles(), d.p.cpu_s(), d.p.write_bytes()
        s = w.emu.stats()
        polls = max(1, k1 - k0)
        figure(f"P2 idle polls measured @{label}", polls, "cycles", n, scale)
        figure(f"P2 requests per poll per folder @{label}", round(s["requests"] / polls / folders, 2), "requests",
               n, scale, ceiling=1)
        figure(f"P2 CPU per idle poll @{label}", round((cpu1 - cpu0) * 1000 / polls, 1), "ms", n, scale, ceiling=5)
        figure(f"P2 bytes written per idle poll @{label}", round((wb1 - wb0) / polls), "bytes", n, scale, ceiling=0)
        # P4: memory after at least 10 idle polls.
        figure(f"P4 RSS after {polls} idle polls @{label}", round(d.p.status_kb("VmRSS") / 1024, 1), "MiB", n,
               scale, ceiling=30 if n <= 10_000 else 100)
        # P5: local -> cloud, one flag change at a time.
        lat = []
        names = sorted(os.listdir(os.path.join(w.maildir, "cur")) + ["new/" + x for x in
                       os.listdir(os.path.join(w.maildir, "new"))])[:20 if quick else 50]
        cpu0, wb0 = d.p.cpu_s(), d.p.write_bytes()
        patch_routes = ("graph PATCH /me/messages/{id} (in $batch)", "graph PATCH /me/messages/{id}")
        for name in names:
            src = os.path.join(w.maildir, name if name.startswith("new/") else "cur/" + name)
            base = os.path.basename(src).split(":2,")[0]
            flags = os.path.basename(src).split(":2,")[1] if ":2," in src else ""
            new_flags = "".join(sorted(set(flags) ^ {"S"}))
            before = sum(route_requests(w.emu.stats(), r) for r in patch_routes)
            t = time.time()
            os.rename(src, os.path.join(w.maildir, "cur", f"{base}:2,{new_flags}"))
            deadline = t + 120
            while sum(route_requests(w.emu.stats(), r) for r in patch_routes) <= before:
                if time.time() > deadline:
                    raise SystemExit(f"bench: a flag change never reached the cloud; see {d.log.name}")
                time.sleep(0.005)
            lat.append(time.time() - t)
            time.sleep(0.3)
        cpu1, wb1 = d.p.cpu_s(), d.p.write_bytes()
        lat.sort()
        figure(f"P5 local->cloud median @{label}", round(statistics.median(lat) * 1000), "ms", n, scale,
               ceiling=200)
        figure(f"P5 local->cloud p95 @{label}", round(lat[int(len(lat) * 0.95) - 1] * 1000), "ms", n, scale)
        figure(f"P5 CPU per change @{label}", round((cpu1 - cpu0) * 1000 / len(lat), 1), "ms", n, scale)
        figure(f"P5 bytes written per change @{label}", round((wb1 - wb0) / len(lat)), "bytes", n, scale)
    finally:
        d.stop()


def p6(args, scale, samples):
    n = 1_000 // scale
    w = World(args, "p6", [("o365", "p6@contoso.example", "Inbox", n)], ["--seed", "14"], poll=15)
    try:
        w.once()
        d = w.start()
        try:
            d.wait_cycles(1, 600)
            lat = []
            rng = random.Random(14)
            for i in range(samples):
                # Anywhere in the poll interval, as mail arrives.
                time.sleep(rng.uniform(0, 15))
                before = w.files()
                t = time.time()
                w.emu.ctl("POST", "deliver", {"user": "p6@contoso.example", "folder": "Inbox",
                                              "raw": f"From: a@example.org\r\nTo: p6@contoso.example\r\n"
                                                     f"Subject: p6 {i}\r\nMessage-ID: <p6-{i}-{t}@example.org>\r\n"
                                                     f"\r\nhello\r\n"})
                while w.files() <= before:
                    if time.time() > t + 120:
                        raise SystemExit("bench: a new cloud message never arrived")
                    time.sleep(0.02)
                lat.append(time.time() - t)
            figure("P6 cloud->local median (poll 15 s)", round(statistics.median(lat), 2), "s", n, scale, ceiling=16)
            figure("P6 cloud->local max (poll 15 s)", round(max(lat), 2), "s", n, scale)
        finally:
            d.stop()
    finally:
        w.close()


def bad_figures(figures):
    """Figures that are not finite numbers or lack a field."""
    bad = []
    for f in figures:
        v = f.get("value")
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf"))
                or not all(k in f for k in ("name", "unit", "messages", "scale"))):
            bad.append(f)
    return bad


SCENARIOS = ["P1", "P1-Gmail", "P2", "P3", "P4", "P5", "P6", "Routing"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every mailbox 1/10 of its size")
    ap.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    ap.add_argument("--json", help="also write the figures here (one JSON object per line)")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--work-dir", default=None, help="where the worlds live (default: the temp dir)")
    args = ap.parse_args()
    want = set(SCENARIOS if not args.only else [x.strip() for x in args.only.split(",")])
    unknown = want - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for b in ("cloud-mdir-sync", "cms-fakecloud"):
        if not os.access(os.path.join(args.bin_dir, b), os.X_OK):
            raise SystemExit(f"bench: {args.bin_dir}/{b} missing: run `cargo build --release --workspace --bins`")
    scale = 10 if args.quick else 1
    t0 = time.time()
    if "P1" in want:
        p1(args, scale)
    if "P1-Gmail" in want:
        p1_gmail(args, scale)
    steady_want = want & {"P2", "P3", "P4", "P5", "Routing"}
    if steady_want:
        # Accounts of at most 5,000 messages: each initial sync fits in one
        # Graph request window (10,000 per 10 minutes per mailbox).
        steady(args, scale, "10k" if scale == 1 else "1k", 10_000 // scale, 2, steady_want - {"Routing"})
        steady(args, scale, "100k" if scale == 1 else "10k", 100_000 // scale, 20, steady_want)
    if "P6" in want:
        p6(args, scale, 2 if args.quick else 5)

    bad = bad_figures(FIGURES)
    print(f"\n{'figure':<58} {'value':>14} {'unit':<10} {'ceiling':>10} {'messages':>9}")
    for f in FIGURES:
        c = f.get("ceiling")
        print(f"{f['name']:<58} {f['value']:>14,} {f['unit']:<10} {'' if c is None else f'{c:,}':>10} "
              f"{f['messages']:>9,}")
    for f in FIGURES:
        print(json.dumps(f))
    if args.json:
        with open(args.json, "w") as out:
            for f in FIGURES:
                out.write(json.dumps(f) + "\n")
    print(f"bench: {len(FIGURES)} figures in {time.time() - t0:.0f} s", file=sys.stderr)
    if bad or not FIGURES:
        print(f"bench: missing or non-numeric figures: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
