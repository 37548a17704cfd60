#!/usr/bin/env python3
"""How many connections each peer of a swarm started together ends up with (spec/P2P.md §4.7).

A model of the netlab bench's start: peers join one at a time (the seed first), each learns 50
random peers of those before it from the tracker and dials them in that order, and every 5 s
(125 joins' time) each re-announces, learns 50 random others and dials more while its rule
allows. A dial succeeds iff the dialled peer's rule lets it in. Rules, for a bound B:

  old: dial while holding fewer than B/2 connections; accept while holding fewer than B.
  new: dial while fewer than B/2 of our connections were dialled by us (and fewer than B in
       all); accept while fewer than B - B/2 were dialled by others (and fewer than B in all);
       the seed, which dials nobody, accepts up to B.

Prints, over five seeds, the mean, least and most connections of a leecher, of the first fifth
and the last fifth to join, and of the seed:

    python3 benches/swarm/connections_model.py
"""
import random
import statistics


def run(rule, seed, n=100, bound=50, rounds=40):
    dial_limit = bound // 2
    rng = random.Random(seed)
    out = [set() for _ in range(n)]
    inn = [set() for _ in range(n)]

    def held(i):
        return len(out[i]) + len(inn[i])

    def may_accept(j):
        if j == 0 or rule == "old":
            return held(j) < bound
        return len(inn[j]) < bound - dial_limit and held(j) < bound

    def may_dial(i):
        if rule == "old":
            return held(i) < dial_limit
        return len(out[i]) < dial_limit and held(i) < bound

    def dial(i, known):
        for j in known:
            if not may_dial(i):
                return
            if j != i and j not in out[i] and j not in inn[i] and may_accept(j):
                out[i].add(j)
                inn[j].add(i)

    joined = []
    for t in range(n + rounds * 125):
        if t < n:
            joined.append(t)
            if t > 0:
                dial(t, rng.sample(joined[:-1], min(50, t)))
        if t % 125 == 0:
            for i in joined[1:]:
                others = [j for j in joined if j != i]
                dial(i, rng.sample(others, min(50, len(others))))
    return [held(i) for i in range(1, n)], held(0)


def main():
    for n in (33, 100):
        for rule, bound in (("old", 50), ("new", 50), ("new", 40)):
            leechers, seeds = [], []
            for seed in range(5):
                held, seed_held = run(rule, seed, n=n, bound=bound)
                leechers.append(held)
                seeds.append(seed_held)
            every = [h for run_ in leechers for h in run_]
            fifth = (n - 1) // 5
            first = [h for run_ in leechers for h in run_[:fifth]]
            last = [h for run_ in leechers for h in run_[-fifth:]]
            print(
                f"1 + {n - 1}, {rule} rule, bound {bound}: mean {statistics.mean(every):.1f}, "
                f"least {min(every)}, most {max(every)}; first fifth {statistics.mean(first):.1f}, "
                f"last fifth {statistics.mean(last):.1f}; seed {statistics.mean(seeds):.0f}"
            )


if __name__ == "__main__":
    main()
