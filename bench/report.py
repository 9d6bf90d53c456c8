"""Summaries, ratios, targets and the three renderings (terminal, JSON, Markdown) of a run.

Stats.of(samples)                    median / min / max wall, median CPU, max peak RSS
evaluate(stats, checks) -> Verdict   ratios and PASS/FAIL per target
text(...) / markdown(...) / as_json(...)
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from datetime import date
from typing import Optional

from measure import Sample

GB = 1e9
# Targets from the "Speed and memory" issue.
SLERP_FLOOR_MAX, TIES_FLOOR_MAX = 4.0, 6.0  # mergesmith wall / cp wall
SLERP_SPEEDUP_MIN, TIES_SPEEDUP_MIN = 4.0, 8.0  # mergekit wall / mergesmith wall
RSS_MAX = 1 * GB
CLI_MAX_S = 1.0
PICO_MERGE_MAX_S = 2.0
# "Not growing" from 1b to 3b: the 3b's largest tensor is 1.56x the 1b's, so a streaming merge
# may grow by a few of those (~25%); one holding whole models grows ~3x.
RSS_GROWTH_MAX = 1.25
SCALED_SHAPES = ("1b", "3b")  # pico runs are start-up dominated: no speed or memory targets


@dataclass(frozen=True)
class Stats:
    walls: tuple[float, ...]
    cpu_s: float
    peak_rss_bytes: int

    @classmethod
    def of(cls, samples: list[Sample]) -> Stats:
        return cls(
            tuple(s.wall_s for s in samples),
            statistics.median(s.cpu_s for s in samples),
            max(s.peak_rss_bytes for s in samples),
        )

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    limit: str
    passed: bool


@dataclass(frozen=True)
class Verdict:
    ratios: dict[str, float]
    targets: list[Target]


Key = tuple[str, str]  # (shape, job)


def _ratios(stats: dict[Key, Stats], shape: str) -> dict[str, float]:
    def get(job: str) -> Optional[Stats]:
        return stats.get((shape, job))

    out = {}
    floor = get("floor")
    for method in ("slerp", "ties"):
        ours, theirs = get(f"mergesmith {method}"), get(f"mergekit {method}")
        if ours and floor:
            out[f"{shape} {method}: mergesmith / floor"] = ours.wall / floor.wall
        if ours and theirs:
            out[f"{shape} {method}: mergekit / mergesmith (speedup)"] = theirs.wall / ours.wall
            # CPU seconds are steadier than wall time when other work shares the machine.
            out[f"{shape} {method}: CPU mergekit / mergesmith"] = theirs.cpu_s / ours.cpu_s
            out[f"{shape} {method}: peak RSS mergekit / mergesmith"] = theirs.peak_rss_bytes / ours.peak_rss_bytes
    return out


def _at_most(name: str, value: float, limit: float, unit: str = "x") -> Target:
    return Target(name, f"{value:.2f}{unit}", f"<= {limit:g}{unit}", value <= limit)


def _shape_targets(stats: dict[Key, Stats], ratios: dict[str, float], shape: str) -> list[Target]:
    targets = []
    for method, limit in (("slerp", SLERP_FLOOR_MAX), ("ties", TIES_FLOOR_MAX)):
        key = f"{shape} {method}: mergesmith / floor"
        if key in ratios:
            targets.append(_at_most(f"{shape} {method} vs floor", ratios[key], limit))
    for method, limit in (("slerp", SLERP_SPEEDUP_MIN), ("ties", TIES_SPEEDUP_MIN)):
        speedup = ratios.get(f"{shape} {method}: mergekit / mergesmith (speedup)")
        if speedup is not None:
            targets.append(
                Target(f"{shape} {method} speedup over mergekit", f"{speedup:.2f}x", f">= {limit:g}x", speedup >= limit)
            )
    rss = [stats[(shape, f"mergesmith {m}")].peak_rss_bytes for m in ("slerp", "ties")]
    targets.append(_at_most(f"{shape} mergesmith peak RSS", max(rss) / GB, RSS_MAX / GB, " GB"))
    return targets


def evaluate(stats: dict[Key, Stats], shapes: list[str]) -> Verdict:
    ratios: dict[str, float] = {}
    targets: list[Target] = []
    for shape in shapes:
        ratios.update(_ratios(stats, shape))
        if shape in SCALED_SHAPES:
            targets += _shape_targets(stats, ratios, shape)
    if all(s in shapes for s in SCALED_SHAPES):

        def peak(shape: str) -> int:
            return max(stats[(shape, f"mergesmith {m}")].peak_rss_bytes for m in ("slerp", "ties"))

        ratios["peak RSS 3b / 1b"] = peak("3b") / peak("1b")
        targets.append(_at_most("peak RSS growth 1b -> 3b", ratios["peak RSS 3b / 1b"], RSS_GROWTH_MAX))
    for job, limit in (
        ("mergesmith --help", CLI_MAX_S),
        ("mergesmith plan", CLI_MAX_S),
        ("pico ties merge", PICO_MERGE_MAX_S),
    ):
        if ("cli", job) in stats:
            targets.append(_at_most(job, stats[("cli", job)].wall, limit, " s"))
    return Verdict(ratios, targets)


def machine() -> dict[str, object]:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = models[0] if models else cpu
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": date.today().isoformat(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _rows(stats: dict[Key, Stats]) -> list[tuple[str, ...]]:
    return [
        (
            shape,
            job,
            f"{s.wall:.2f} ({min(s.walls):.2f}-{max(s.walls):.2f})",
            f"{s.cpu_s:.1f}",
            f"{s.peak_rss_bytes / GB:.2f}",
        )
        for (shape, job), s in stats.items()
    ]


HEADER = ("shape", "job", "wall s, median (min-max)", "CPU s", "peak RSS GB")


def text(stats: dict[Key, Stats], verdict: Verdict, checks: list) -> str:
    rows = [HEADER, *_rows(stats)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines += ["", "ratios:"] + [f"  {k}: {v:.2f}" for k, v in verdict.ratios.items()]
    lines += ["", "targets:"] + [
        f"  {'PASS' if t.passed else 'FAIL'}  {t.name}: {t.measured} (target {t.limit})" for t in verdict.targets
    ]
    lines += ["", "correctness:"] + [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in checks]
    return "\n".join(lines)


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(stats: dict[Key, Stats], verdict: Verdict, checks: list, context: dict) -> str:
    m = context["machine"]
    lines = [
        f"Measured {m['date']} on {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu']} "
        f"({context['versions']}); {context['repeat']} runs per job, warm page cache, every "
        f"merge command ends with `sync`; floor = `cp -r` of model A. Peak RSS: {context['probe']}.",
        "",
    ]
    lines += _md_table(HEADER, _rows(stats)) + [""]
    target_rows = [(t.name, t.measured, t.limit, "PASS" if t.passed else "FAIL") for t in verdict.targets]
    target_rows += [(c.name, c.detail, "", "PASS" if c.passed else "FAIL") for c in checks]
    return "\n".join(lines + _md_table(("target", "measured", "limit", "result"), target_rows)) + "\n"


def as_json(stats: dict[Key, Stats], verdict: Verdict, checks: list, context: dict) -> dict:
    jobs = [{"shape": shape, "job": job, "wall_s_median": s.wall, **asdict(s)} for (shape, job), s in stats.items()]
    return {
        **context,
        "jobs": jobs,
        "ratios": verdict.ratios,
        "targets": [asdict(t) for t in verdict.targets],
        "checks": [asdict(c) for c in checks],
    }
