"""CPU (-ngl 0) against GPU agreement of gptcli's inside views, one Markdown table.

Criteria (issue 23): the top token equal at every layer (lens), at every step (next), and
probabilities (attention weights) within TOL. Random-weight models can have near ties, so
a differing top token is shown with both probabilities, never hidden.
usage: compare.py DIR      (DIR holds {lens,attention,next}-{cpu,gpu}.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOL = 0.01


def load(path: Path, lines: bool):
    text = path.read_text().strip()
    return [json.loads(x) for x in text.splitlines()] if lines else json.loads(text)


def lens(a, b) -> tuple[str, str, bool]:
    rows = list(zip(a["rows"], b["rows"], strict=False))
    same = sum(x["top"]["id"] == y["top"]["id"] for x, y in rows)
    dp = max(abs(x["top"]["prob"] - y["top"]["prob"]) for x, y in rows)
    df = abs(a["final"][0]["prob"] - b["final"][0]["prob"])
    ok = same == len(rows) and dp <= TOL and df <= TOL and len(a["rows"]) == len(b["rows"])
    return (
        f"top token equal at {same}/{len(rows)} layers",
        f"max top-prob diff {dp:.4f}; final token {a['final'][0]['token']!r} "
        f"cpu {a['final'][0]['prob']:.4f} gpu {b['final'][0]['prob']:.4f}",
        ok,
    )


def attention(a, b) -> tuple[str, str, bool]:
    d, n = 0.0, 0
    for la, lb in zip(a["layers"], b["layers"], strict=False):
        for ha, hb in zip(la["heads"], lb["heads"], strict=False):
            for ra, rb in zip(ha["weights"], hb["weights"], strict=False):
                for x, y in zip(ra, rb, strict=False):
                    d, n = max(d, abs(x - y)), n + 1
    same = len(a["layers"]) == len(b["layers"]) and n > 0
    return f"{n} weights, {len(a['layers'])} layers", f"max weight diff {d:.4f}", same and d <= TOL


def next_(a, b) -> tuple[str, str, bool]:
    same, dp = 0, 0.0
    for sa, sb in zip(a, b, strict=False):
        same += sa["top"][0]["id"] == sb["top"][0]["id"]
        ids_b = {t["id"]: t["probs"][0] for t in sb["top"]}
        dp = max(
            [dp] + [abs(t["probs"][0] - ids_b[t["id"]]) for t in sa["top"] if t["id"] in ids_b]
        )
    ok = same == len(a) == len(b) and dp <= TOL
    return (
        f"top token equal at {same}/{len(a)} steps",
        f"max prob diff {dp:.4f} (shared top ids)",
        ok,
    )


def main(folder: Path) -> int:
    print(f"| view | agreement | difference (tolerance {TOL}) | verdict |")
    print("| --- | --- | --- | --- |")
    bad = 0
    for kind, fn in (("lens", lens), ("attention", attention), ("next", next_)):
        try:
            a = load(folder / f"{kind}-cpu.json", kind == "next")
            b = load(folder / f"{kind}-gpu.json", kind == "next")
            what, diff, ok = fn(a, b)
        except (OSError, ValueError, KeyError, IndexError) as e:
            what, diff, ok = "no result", f"{type(e).__name__}: {str(e)[:80]}", False
        bad += not ok
        print(f"| {kind} | {what} | {diff} | {'agree' if ok else 'DIFFER'} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
