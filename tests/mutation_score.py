"""Per-module mutation score from `mutmut results --all true` on stdin (`make mutate`).

A mutant is killed when a test failed on it (or it timed out: an endless loop the tests
noticed); survived when every selected test passed; "no tests" when no selected test
ran its function; "not run" when the run was stopped before it. The score is
killed / (killed + survived + no tests)."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s*(gptcli\.[\w.]+?)\.(x\S*?|xǁ\S*?)__mutmut_\d+:\s*(.+?)\s*$")
KILLED = {"killed", "timeout", "segfault"}
# model/hub.py: only its verification part is measured (the download loop needs a hub).
HUB_VERIFY = ("x__digest", "x__verified_blob", "x__check_gguf")


def main() -> int:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        module, func, status = m.groups()
        if module == "gptcli.model.hub" and not func.startswith(HUB_VERIFY):
            continue
        counts[module][status] += 1
        if status not in KILLED and status != "not checked":
            survivors.append(line.strip())
    print(
        f"{'module':<24} {'mutants':>7} {'not run':>7} {'killed':>6} {'survived':>8} "
        f"{'no tests':>8} {'score':>6}"
    )
    for module in sorted(counts):
        c = counts[module]
        total = sum(c.values())
        run = total - c["not checked"]  # an interrupted run leaves some unchecked
        killed = sum(c[s] for s in KILLED)
        score = f"{100 * killed / run:>5.1f}%" if run else "  -   "
        print(
            f"{module:<24} {total:>7} {c['not checked']:>7} {killed:>6} {c['survived']:>8} "
            f"{c['no tests']:>8} {score}"
        )
    if survivors:
        print("\nnot killed (`mutmut show NAME` prints the change):")
        print("\n".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
