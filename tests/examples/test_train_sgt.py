"""Smoke test of examples/train_sgt.py: a 20-step run in a subprocess (about 10 s) in which
every layer grows, each growth event is logged with the heads its HeadLoop chose, and the
loss summary and run time are printed."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_sgt.py"


def test_train_sgt_smoke():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--steps", "20", "--window", "10",
                           "--batch", "8", "--seq", "32"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # default schedule for 20 steps: start 5, every 2 -> layers 3, 2, 1, 0 grow at 5, 7, 9, 11
    events = re.findall(r"step\s+(\d+)\s+growth: layer (\d) \(onset (\d+)\) now loops heads "
                        r"\[(\d)\]  \[entropy ([^\]]*)\]", out)
    assert [(int(s), int(l)) for s, l, *_ in events] == [(5, 3), (7, 2), (9, 1), (11, 0)], out
    assert all(s == o for s, _, o, *_ in events)
    for *_, head, ranking in events:
        ent = {int(h): float(e) for h, e in re.findall(r"h(\d+)=([\d.]+)", ranking)}
        assert sorted(ent) == list(range(8)), ranking
        # the chosen head has the highest entropy on the loop input (to the printed digits)
        assert ent[int(head)] == max(ent.values()), (head, ranking)
    assert "growth events: 4 of 4 layers" in out
    rows = re.findall(r"steps\s+(\d+)-\s*(\d+)\s+train loss ([\d.]+)", out)
    assert [(int(a), int(b)) for a, b, _ in rows] == [(0, 9), (10, 19)], out
    first, last = float(rows[0][2]), float(rows[1][2])
    assert last < first, f"loss did not fall: {first} -> {last}"
    assert re.search(r"run time [\d.]+s", out)
    assert "]" in proc.stderr and "20/20" in proc.stderr   # the progress bar
