"""Where a run's wall time goes: start-up, data, compilation, train steps, validation, checkpoints,
the end-of-training prior fit, sampler choice and pictures.

A `Breakdown` times named parts of a run (`with breakdown.part("validation"): ...`); parts are
exclusive (a part opened inside another pauses it), so they never overlap. JAX's own monitoring
events give the time spent tracing, lowering and compiling (`/jax/core/compile/...`, as spans)
and the persistent cache's hits and misses; compilation is counted once (the union of its spans)
and taken out of the part it happened in. `summary()` adds `other` (what no part covers), so the
rows sum to the wall time. The `main` command calls `mark_process_start()` first thing, so its
breakdown begins when the process was created and its first row is the interpreter's start-up and
the imports.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Iterator

import jax

# The rows of a breakdown, in the order a run meets them.
PARTS = (
    "startup",  # process creation → the command's main(): interpreter, imports, flags
    "data",  # loading or preparing the splits, placing them on the devices
    "model_init",  # the initial parameters (compiled once) and their placement
    "restore",  # finding and reading the checkpoint a run resumes from
    "compile",  # tracing, lowering and compiling programs (all parts), cache reads included
    "train_steps",  # train steps, waited for (without their compilation)
    "validation",  # validation passes
    "checkpoint",  # saving checkpoints: the time the loop waits for them
    "logging",  # metrics lines, progress bar
    "prior_fit",  # the learned prior of the final checkpoints (after_training.finish)
    "sampler_choice",  # measuring their samplers for `auto` (config.choose_sampler)
    "pictures",  # samples.png and reconstructions.png
    "other",  # everything else (wall minus the rows above)
)
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
BACKEND_COMPILE = COMPILE_EVENTS[2]
CACHE_EVENTS = {
    "/jax/compilation_cache/cache_hits": "hits",
    "/jax/compilation_cache/cache_misses": "misses",
}

_process: dict[str, float] = {}


def mark_process_start() -> None:
    """Records that a command's main() starts now: the next `Breakdown` made in this process
    begins at the process's creation, with `startup` up to now."""
    now = time.time()
    _process["created"] = now - process_age()
    _process["main"] = now


def process_age() -> float:
    """Seconds since this process was created: from /proc/self/stat on Linux (its start in
    clock ticks since boot, against CLOCK_BOOTTIME: 10 ms resolution), else psutil's
    create_time (whole-second boot time), else 0 where neither is available."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        ticks = int(after_name[19])  # field 22, starttime; fields after ")" start at 3
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except ImportError:
        return 0.0


class Breakdown:
    """The wall time of one run, by part; listens to JAX's compile events until `close()`."""

    def __init__(self) -> None:
        started = dict(_process)  # the first breakdown of a command takes its start-up
        _process.clear()
        self.start = started.get("created", time.time())
        self.end: float | None = None
        self._intervals: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        if "main" in started:
            self._intervals["startup"].append((self.start, started["main"]))
        self._stack: list[list] = []  # [part, start] of the open parts, innermost last
        self._spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        self.programs: dict[str, dict[str, float]] = {}  # name → {count, seconds}
        self.cache = {"hits": 0, "misses": 0}
        self.counts: dict[str, int] = collections.Counter()
        jax.monitoring.register_event_time_span_listener(self._on_span)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_span(self, event: str, start: float, end: float, **kwargs) -> None:
        if event not in COMPILE_EVENTS:
            return
        self._spans[event].append((start, end))  # nested: a jit traced inside another
        if event == BACKEND_COMPILE:
            name = str(kwargs.get("fun_name", "?"))
            entry = self.programs.setdefault(name, {"count": 0, "seconds": 0.0})
            entry["count"] += 1
            entry["seconds"] += end - start

    def _on_event(self, event: str, **kwargs) -> None:
        if event in CACHE_EVENTS:
            self.cache[CACHE_EVENTS[event]] += 1

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Times the block as `name` (one of PARTS), pausing the part it is nested in."""
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}; one of {PARTS}")
        now = time.time()
        if self._stack:
            outer, since = self._stack[-1]
            self._intervals[outer].append((since, now))
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = time.time()
            _, since = self._stack.pop()
            self._intervals[name].append((since, now))
            if self._stack:
                self._stack[-1][1] = now

    def count(self, name: str, n: int = 1) -> None:
        """Adds `n` to the counter `name` (e.g. the train steps run)."""
        self.counts[name] += n

    def close(self) -> None:
        """Stops listening to JAX and ends the wall time (idempotent)."""
        if self.end is None:
            self.end = time.time()
            jax.monitoring.unregister_event_time_span_listener(self._on_span)
            jax.monitoring.unregister_event_listener(self._on_event)

    def summary(self) -> dict:
        """{"wall_s", "parts": {part: seconds} (every PART; they sum to wall_s), "programs":
        {name: {count, seconds}} (backend compiles, cache reads included), "compiles",
        "compile_phases": {trace, lower, backend} seconds, "cache": {hits, misses}, "counts",
        "outside_train_steps"} (the fraction of the wall time not spent in train steps)."""
        end = self.end if self.end is not None else time.time()
        wall = end - self.start
        clip = lambda spans: _union([(max(s, self.start), min(e, end)) for s, e in spans])
        compiling = clip([span for spans in self._spans.values() for span in spans])
        parts = {}
        for name in PARTS:
            intervals = self._intervals.get(name, [])
            total = sum(e - s for s, e in intervals)
            parts[name] = max(0.0, total - _overlap(compiling, _union(intervals)))
        parts["compile"] = sum(e - s for s, e in compiling)
        parts["other"] = max(0.0, wall - sum(v for k, v in parts.items() if k != "other"))
        return {
            "wall_s": round(wall, 3),
            "parts": {k: round(v, 3) for k, v in parts.items()},
            "compiles": int(sum(p["count"] for p in self.programs.values())),
            "compile_phases": {  # each phase's own time; they overlap (tracing nests)
                phase: round(sum(e - s for s, e in clip(self._spans.get(event, []))), 3)
                for phase, event in zip(("trace", "lower", "backend"), COMPILE_EVENTS, strict=True)
            },
            "programs": {
                k: {"count": int(v["count"]), "seconds": round(v["seconds"], 3)}
                for k, v in sorted(self.programs.items(), key=lambda kv: -kv[1]["seconds"])
            },
            "cache": dict(self.cache),
            "counts": dict(self.counts),
            "outside_train_steps": round(1.0 - parts["train_steps"] / wall, 4) if wall else 0.0,
        }


def part(breakdown: Breakdown | None, name: str) -> contextlib.AbstractContextManager:
    """`breakdown.part(name)`, or a block timed by nothing when `breakdown` is None."""
    return contextlib.nullcontext() if breakdown is None else breakdown.part(name)


def table(summary: dict, top: int = 6) -> str:
    """The summary as text: one row per part (seconds, % of wall), then the slowest programs."""
    wall = summary["wall_s"] or 1e-9
    cache = summary["cache"]
    lines = [f"time breakdown: {summary['wall_s']:.1f} s wall"]
    for name, seconds in summary["parts"].items():
        note = ""
        if name == "compile":
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in summary["compile_phases"].items())
            note = (
                f"  ({summary['compiles']} programs: {phases}; persistent cache: "
                f"{cache['hits']} hits, {cache['misses']} misses)"
            )
        elif name == "train_steps" and "train_steps" in summary["counts"]:
            note = f"  ({summary['counts']['train_steps']} steps)"
        lines.append(f"  {name:<14} {seconds:8.2f} s {100 * seconds / wall:5.1f} %{note}")
    slowest = list(summary["programs"].items())[:top]
    if slowest:
        lines.append(
            "  slowest compiles: "
            + ", ".join(f"{k} {v['seconds']:.2f} s ×{v['count']}" for k, v in slowest)
        )
    return "\n".join(lines)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint intervals covering the same time as `intervals`."""
    out: list[list[float]] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds in both of two sorted, disjoint interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total
