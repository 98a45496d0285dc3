"""What every benchmark here shares: the CPU's name and paired best-of timing."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def best_pair(
    ours: Callable[[], object],
    base: Callable[[], object],
    repeat: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    budget_s: float = 0.003,
) -> tuple[float, float]:
    """Best per-call seconds of ``ours`` and ``base`` over ``repeat`` rounds that time them
    alternately, each round calling each as many times as ``ours`` needs to fill
    ``budget_s`` of ``clock``."""
    number = 1
    while True:
        t0 = clock()
        for _ in range(number):
            ours()
        if clock() - t0 >= budget_s or number >= 1 << 20:
            break
        number *= 2
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((ours, base)):
            t0 = clock()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (clock() - t0) / number)
    return best[0], best[1]
