"""Verdict stability across seeds (issue 23, 8c): read several finished `diffvae compare` folders (same data and
budget, different --seed) and count, per question, the seeds that decided it and any contradiction between two
decided seeds (a "best" naming another family, a claim held in one and not in another, a paired comparison
decided for a in one and b in another). With --before, also counts the decided verdicts of older reports
(claims + "Best ..." lines) to compare the share decided before and after.

    python benchmarks/verdict_stability.py /tmp/cmp/s0n /tmp/cmp/s1n /tmp/cmp/s2n --before /tmp/cmp/s0 /tmp/cmp/s1 /tmp/cmp/s2
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

UNDECIDED = ("not decided", "not measured")


def load(folder: str) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def verdicts(results: dict) -> dict[str, str | None]:
    """question -> the decided answer (None = not decided): each "best" use, each claim, each comparison."""
    out: dict[str, str | None] = {}
    for use, entry in (results.get("best") or {}).items():
        out[f"best:{use}"] = entry.get("family") if entry.get("decided") else None
    for claim in results.get("claims") or []:
        verdict = claim.get("verdict", "")
        out[f"claim:{claim['claim']}"] = None if verdict.startswith(UNDECIDED) else verdict
    for e in results.get("comparisons") or []:
        key = f"cmp:{e['question']}|{e['metric']}|{e['a']}|{e['b']}"
        out[key] = e["a"] if e.get("decided") == "a" else e["b"] if e.get("decided") == "b" else None
    return out


def old_counts(results: dict) -> tuple[int, int]:
    """(decided, total) of an older report's claims and "Best ..." lines."""
    claims = results.get("claims") or []
    best = [line for line in results.get("when_to_use") or [] if line.startswith("Best ")]
    decided = sum(not c.get("verdict", "").startswith(UNDECIDED) for c in claims)
    decided += sum("not decided" not in line for line in best)
    return decided, len(claims) + len(best)


def new_counts(results: dict) -> tuple[int, int]:
    v = {k: a for k, a in verdicts(results).items() if not k.startswith("cmp:")}
    return sum(a is not None for a in v.values()), len(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("after", nargs="+")
    ap.add_argument("--before", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = {f: verdicts(load(f)) for f in args.after}
    answers: dict[str, list[str | None]] = defaultdict(list)
    for v in runs.values():
        for q, a in v.items():
            answers[q].append(a)
    contradictions = {q: a for q, a in answers.items() if len({x for x in a if x is not None}) > 1}
    rows = []
    for q in sorted(k for k in answers if not k.startswith("cmp:")):
        decided = [a for a in answers[q] if a is not None]
        rows.append((q, f"{len(decided)} of {len(answers[q])}", ", ".join(sorted(set(decided))) or "—"))
    summary = {
        "after": {f: new_counts(load(f)) for f in args.after},
        "before": {f: old_counts(load(f)) for f in args.before},
        "questions": len(answers), "comparisons": sum(k.startswith("cmp:") for k in answers),
        "contradictions": sorted(contradictions), "rows": rows,
    }
    print("| question | decided in | answer(s) |\n|---|---|---|")
    for q, n, a in rows:
        print(f"| {q} | {n} | {a} |")
    print(f"\ncontradictions among {len(answers)} questions (incl. {summary['comparisons']} paired comparisons): "
          f"{len(contradictions)} {sorted(contradictions)}")
    for name in ("before", "after"):
        for f, (d, t) in summary[name].items():
            print(f"{name}: {f}: {d} of {t} verdicts decided")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
