"""The benchmark harness itself: a quick P1 through the built binaries gives
every figure as a number, and its request accounting agrees with the
emulator's own per-mailbox count; a missing or non-numeric figure fails."""

import importlib.util
import json
import subprocess
import sys

from conftest import ROOT, TARGET


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bad_figures_are_caught():
    bench = load_bench()
    good = {"name": "x", "value": 1.5, "unit": "s", "messages": 10, "scale": 1}
    assert bench.bad_figures([good]) == []
    for value in (None, "fast", float("nan"), float("inf"), True):
        assert bench.bad_figures([dict(good, value=value)]), value
    missing = dict(good)
    del missing["unit"]
    assert bench.bad_figures([missing])


def test_quick_p1_reports_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "P1",
         "--json", str(out), "--bin-dir", str(TARGET), "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    figures = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {f["name"]: f for f in figures}
    # Every figure on stdout is in the file too, and all are numbers.
    stdout_figures = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert stdout_figures == figures
    for name in ("P1 wall time", "P1 429s served", "P1 daemon CPU", "P1 peak RSS", "P1 rate vs ceiling",
                 "P1 time to first file", "P1 files at 25% of downloads", "P1 files at the end"):
        assert name in by_name, name
        assert isinstance(by_name[name]["value"], (int, float))
    assert by_name["P1 files at the end"]["value"] == 1000
    assert by_name["P1 requests graph GET /me/messages/{id}/$value"]["value"] == 1000
    # Requests counted per route equal the requests the mailbox was charged.
    per_route = sum(f["value"] for n, f in by_name.items() if n.startswith("P1 requests graph "))
    assert per_route == by_name["P1 requests (mailbox, all routes)"]["value"]
    assert by_name["P1 429s served"]["value"] == 0
