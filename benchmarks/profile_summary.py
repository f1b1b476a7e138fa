"""Summarise py-spy raw (collapsed) stacks: where the broker's CPU time goes.

    .venv/bin/python benchmarks/broker_bench.py --brokers kefu --profile /tmp/prof
    .venv/bin/python benchmarks/profile_summary.py /tmp/prof/qos0-3.1.1.txt [--top 25]

Prints the functions with the most samples on top of the stack ("self") and the
most samples anywhere in the stack ("total", each function counted once per
stack), as shares of all samples. py-spy records only running (non-idle) threads,
so 100% is the broker's busy time, not wall time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str, lines: bool = False) -> str:
    """'func (path/to/kefu/broker/router.py:123)' -> 'router.py:func' (``lines``: 'router.py:123 func')."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    name = path.rsplit("/", 1)[-1]
    if "site-packages/" in path:
        pkg = path.split("site-packages/", 1)[1].split("/", 1)[0]
        name = f"{pkg}/{name}"
    if lines and m.group("line"):
        return f"{name}:{m.group('line')} {m.group('func')}"
    return f"{name}:{m.group('func')}"


def load(path: str, lines: bool = False) -> tuple[Counter, Counter, int]:
    self_c: Counter = Counter()
    total_c: Counter = Counter()
    n = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                k = int(count)
            except ValueError:
                continue
            frames = [short(fr, lines) for fr in stack.split(";") if fr and not fr.startswith("process ")
                      and not fr.startswith("thread ")]
            if not frames:
                continue
            n += k
            self_c[frames[-1]] += k
            for fr in set(frames):
                total_c[fr] += k
    return self_c, total_c, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--lines", action="store_true", help="per source line instead of per function")
    args = ap.parse_args()
    for path in args.files:
        self_c, total_c, n = load(path, args.lines)
        print(f"## {path}: {n} samples")
        print(f"{'self':>6}  function")
        for fn, k in self_c.most_common(args.top):
            print(f"{k / n:6.1%}  {fn}")
        print(f"{'total':>6}  function")
        for fn, k in total_c.most_common(args.top):
            print(f"{k / n:6.1%}  {fn}")
        print()


if __name__ == "__main__":
    main()
