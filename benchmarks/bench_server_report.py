"""The tables ``bench_server.py`` prints: medians, ratios and targets, the notes, and the
CPU both sides used in the timed phase."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench_server import Outcome, Scenario


def met(target: tuple[str, float] | None, ratio: float | None) -> str:
    """The target column: ``>= 1.0x: met`` / ``not met`` (blank without a target)."""
    if target is None:
        return ""
    op, want = target
    if ratio is None:
        return f"{op} {want:g}x"
    ok = ratio >= want if op == ">=" else ratio <= want
    return f"{op} {want:g}x: {'met' if ok else 'NOT met'}"


def cell(value: float, note: str, anchor: str) -> str:
    """A table cell: the median (none when every run was skipped), a note, the anchor."""
    text = note if math.isnan(value) else f"{value:,.0f}{' ' + note if note else ''}"
    return f"{text} ({anchor})" if anchor else text


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def report(scenarios: list[Scenario], kinds: list[str],
           results: dict[tuple[str, str], list[Outcome]], notes: dict[tuple[str, str], str],
           idle: int, idle_function: str) -> None:
    """Print the markdown tables of a run."""
    import bench_server_rows as new_rows  # after bench_server is importable by that name
    print(f"\n| measure | unit | {' | '.join(kinds)} | ratio | target |")
    print("|---|---|" + "---|" * len(kinds) + "---|---|")
    medians: dict[str, list[float]] = {}
    for sc in scenarios:
        meds = [statistics.median(o.value for o in results[(sc.name, k)]) for k in kinds]
        medians[sc.name] = meds
        ratio = (meds[0] / meds[1] if len(meds) == 2 and meds[1] and not math.isnan(meds[0])
                 and not math.isnan(meds[1]) else None)
        cells = " | ".join(cell(m, notes.get((sc.name, k), ""),
                                sc.anchor if k == "reference" else "")
                           for m, k in zip(meds, kinds, strict=True))
        target = met(sc.target, ratio) or (f"none (ratio: this row / {sc.anchor})"
                                           if sc.anchor else "")
        print(f"| {sc.name} | {sc.unit} ({'higher' if sc.higher else 'lower'} is better) "
              f"| {cells} | {'' if ratio is None else f'{ratio:.2f}x'} | {target} |")
    new_rows.notes([sc.name for sc in scenarios], kinds)
    own = [s.name for s in scenarios if "libsqlite3" in s.name]
    mem = [s.name for s in scenarios if s.name.startswith("background submits, no unique")]
    if own and mem and medians[mem[0]][0]:
        share = medians[own[0]][0] / medians[mem[0]][0]
        print(f"\nOur -q libsqlite3 rate is {share:.2f}x our in-memory rate (target >= 0.5x:"
              f" {'met' if share >= 0.5 else 'NOT met'}).")
    for name, _unit, _fn, _higher, *_rest in scenarios:
        if "idle workers" in name:
            counts = "; ".join(
                f"{k}: NOOPs {[o.idle_noops for o in results[(name, k)]]}, other packets "
                f"{[o.idle_other for o in results[(name, k)]]}, in status "
                f"{[o.idle_registered for o in results[(name, k)]]}" for k in kinds)
            print(f"\nPackets to the {idle:,} idle workers (CAN_DO "
                  f"{idle_function}) per run, must be 0: {counts}")
    print("\nCPU in the timed phase (medians; busy = CPU seconds / wall seconds, "
          "100% = one core):\n")
    head = " | ".join(f"server busy ({k}) | loadgen busy ({k}) | loadgen us/job ({k})"
                      for k in kinds)
    print(f"| measure | {head} |")
    print("|---|" + "---|---|---|" * len(kinds))
    for sc in scenarios:
        name = sc.name
        row: list[str] = []
        for k in kinds:
            runs = [o for o in results[(name, k)] if o.seconds > 0]
            if not runs:
                row.append("- | - | -")
                continue
            server = statistics.median((o.server_cpu or 0) / o.seconds for o in runs)
            lg = statistics.median(o.loadgen_cpu / o.seconds for o in runs)
            per_job = statistics.median(o.loadgen_us_per_job() for o in runs)
            row.append(f"{server * 100:.0f}% | {lg * 100:.0f}% | {per_job:.1f}")
        anchor = f" (reference columns: {sc.anchor})" if sc.anchor else ""
        print(f"| {name}{anchor} | {' | '.join(row)} |")

