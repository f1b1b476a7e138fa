"""Write train.csv / heldout.csv (text,category) from the hand-written section files here.

Files named train_*.txt and heldout_*.txt hold "# intent" headings followed by one
message per line. Refuses a held-out message that also appears in the training files.
"""
import csv
import glob
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(pattern: str) -> list[tuple[str, str]]:
    rows, label = [], None
    for path in sorted(glob.glob(str(HERE / pattern))):
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if not line:
                continue
            if line.startswith("# "):
                label = line[2:]
            else:
                rows.append((line, label))
    return rows


def main() -> int:
    train, held = load("train_*.txt"), load("heldout_*.txt")
    seen = {t for t, _ in train}
    dup = [t for t, _ in held if t in seen]
    if dup:
        print(f"held-out messages also in training: {dup}", file=sys.stderr)
        return 1
    for name, rows in (("train.csv", train), ("heldout.csv", held)):
        with open(HERE / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "category"])
            w.writerows(rows)
        print(f"{name}: {len(rows)} rows, {len({y for _, y in rows})} intents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
