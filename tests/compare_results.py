"""Compare the records of two sets of results files (e.g. the smoke results before and after a refactoring).

    python tests/compare_results.py BEFORE_DIR AFTER_DIR [--rename-metric OLD=NEW ...] [--rename-setting OLD=NEW ...]

Each folder holds ``<chapter>.json`` files (``results/<profile>/``). Records are compared as multisets after the
given renames (a refactoring that unifies vocabulary renames metrics or setting keys, never values). Prints, per
chapter, whether the records are identical, and every record only in one of the two; exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep:
            raise SystemExit(f"expected OLD=NEW, got {item!r}")
        out[old] = new
    return out


def canonical(rec: dict, metrics: dict[str, str], settings: dict[str, str]) -> str:
    rec = dict(rec)
    rec["metric"] = metrics.get(rec["metric"], rec["metric"])
    rec["setting"] = {settings.get(k, k): v for k, v in rec["setting"].items() if settings.get(k, k) != ""}
    return json.dumps(rec, sort_keys=True)


def compare(before: Path, after: Path, metrics: dict[str, str], settings: dict[str, str]) -> bool:
    same = True
    for path in sorted(before.glob("*.json")):
        other = after / path.name
        if not other.exists():
            print(f"{path.stem}: missing in {after}")
            same = False
            continue
        a = Counter(canonical(r, metrics, settings) for r in json.loads(path.read_text())["records"])
        b = Counter(canonical(r, metrics, settings) for r in json.loads(other.read_text())["records"])
        if a == b:
            print(f"{path.stem}: {sum(a.values())} records, identical")
            continue
        same = False
        print(f"{path.stem}: {sum(a.values())} records before, {sum(b.values())} after; "
              f"{sum((a - b).values())} only before, {sum((b - a).values())} only after")
        for text in sorted(a - b):
            print(f"  - {text}")
        for text in sorted(b - a):
            print(f"  + {text}")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rename-metric", nargs="*", default=[], metavar="OLD=NEW")
    parser.add_argument("--rename-setting", nargs="*", default=[], metavar="OLD=NEW",
                        help="a setting key's new name (OLD= drops the key)")
    args = parser.parse_args(argv)
    ok = compare(args.before, args.after, _pairs(args.rename_metric), _pairs(args.rename_setting))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
