"""Routing decisions per second on the real rule set.

    python benchmarks/rules.py [--rounds 7] [--seconds 0.5]

A decision is what a node asks per message: ``next_steps`` (which steps may start, by whom,
due when) or ``authorize`` (may this sender hand this receiver this step). Medians of rounds,
with the cost of the bare route lookup measured in the same run as the floor. Aim: well over
100,000 decisions per second, so the router is never the bottleneck.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from exchange.rules.load import load
from exchange.rules.model import RuleSet

RULES_DIR = Path(__file__).resolve().parent.parent / "tests" / "rules" / "seed-2019"
ICT = dt.timezone(dt.timedelta(hours=7))


def rate(fn: Callable[[int], object], seconds: float, rounds: int) -> float:
    """Median calls per second over ``rounds`` rounds."""
    results = []
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for i in range(1000):
                fn(i)
            count += 1000
        results.append(count / elapsed)
    return statistics.median(results)


def questions(rules: RuleSet, n: int) -> list[tuple]:  # type: ignore[type-arg]
    rng = random.Random(7)
    keys = sorted(rules.routes)
    out = []
    for _ in range(n):
        code, origin, epoch = rng.choice(keys)
        proc = rules.procedures[code]
        route = rules.routes[(code, origin, epoch)]
        cut = rng.randrange(len(proc.steps))
        received = dt.datetime(2026, rng.randint(1, 11), rng.randint(1, 28), rng.randint(7, 17),
                               tzinfo=ICT)
        done = {s.id: received for s in proc.steps[:cut]}
        step = proc.steps[max(cut, 1)] if len(proc.steps) > 1 else proc.steps[0]
        sender = route[step.after[0]] if step.after else origin
        out.append((code, origin, received, done, sender, route[step.id], step.id))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    start = time.perf_counter()
    rules = load(RULES_DIR)
    loaded = time.perf_counter() - start
    qs = questions(rules, 1000)

    floor = rate(lambda i: rules.routes[(qs[i][0], qs[i][1], 0)], args.seconds, args.rounds)
    nexts = rate(lambda i: rules.next_steps(*qs[i][:4]), args.seconds, args.rounds)
    auths = rate(lambda i: rules.authorize(qs[i][4], qs[i][5], qs[i][0], qs[i][6], qs[i][1]),
                 args.seconds, args.rounds)
    print(f"rule set: {len(rules.agencies)} agencies, {len(rules.procedures)} procedures, "
          f"{len(rules.routes)} routes; loaded and checked in {loaded * 1000:.0f} ms")
    print(f"medians of {args.rounds} rounds of {args.seconds}s")
    print(f"  bare route lookup  {floor:12,.0f}/s  (floor)")
    print(f"  next_steps         {nexts:12,.0f}/s  {floor / nexts:5.1f}x the floor's cost")
    print(f"  authorize          {auths:12,.0f}/s  {floor / auths:5.1f}x the floor's cost")


if __name__ == "__main__":
    main()
