"""The paired bootstrap of a gain (``evaluation.gains.paired_bootstrap_gain``) against the same bootstrap run
one resample at a time, and against ``scipy.stats.bootstrap`` (paired, percentile) on one slide.

Sizes are the her2st cross-validation's: 4 held-out slides of 600-700 spots, 50 genes (HEST ridge), 5 labels
(probe), k-means clusters (ARI); 1,000 replicates. Checks that the intervals agree with the loop's to 1e-9
(the same resamples) and prints seconds and ratios, best of ``--repeats`` rounds in which the three take turns.

    python benchmarks/bench_bootstrap.py [--repeats 3] [--json benchmarks/results/bootstrap_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial

import numpy as np

from stamp_st.evaluation.gains import STATISTICS, paired_bootstrap_gain


def loop_bootstrap(per, metric: str, n_boot: int = 1000, seed: int = 0):
    """The bootstrap as it was before blocks: the statistic given as a function takes
    ``paired_bootstrap_gain``'s one-resample-at-a-time path."""
    g = paired_bootstrap_gain(per, STATISTICS[metric], n_boot=n_boot, seed=seed)
    return g["low"], g["high"]


def scipy_one_slide(t, a, b, metric: str, n_boot: int = 1000):
    """What one would write with scipy for one slide: resample spot indices, the statistic per resample."""
    from scipy.stats import bootstrap

    fn = STATISTICS[metric]
    res = bootstrap((np.arange(len(t)),), lambda i: fn(t[i], a[i]) - fn(t[i], b[i]), vectorized=False,
                    n_resamples=n_boot, method="percentile", random_state=0)
    return res.confidence_interval


def cases(seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = (620, 700, 650, 690)
    labels = np.array(["invasive", "in situ", "immune", "connective", "adipose"])
    out = {}
    per = []
    for n in sizes:
        t = rng.gamma(1.0, 1.0, size=(n, 50))
        per.append((t, t + rng.normal(0, 3.0, t.shape), t + rng.normal(0, 3.3, t.shape)))
    out["pearson"] = per
    per = []
    for n in sizes:
        t = labels[rng.integers(0, 5, n)]
        per.append((t, np.where(rng.random(n) < 0.5, t, labels[0]), labels[rng.integers(0, 5, n)]))
    out["balanced_accuracy"] = per
    per = []
    for n in sizes:
        t = labels[rng.integers(0, 5, n)]
        per.append((t, np.where(rng.random(n) < 0.5, np.unique(t, return_inverse=True)[1], 0), rng.integers(0, 5, n)))
    out["ari"] = per
    return out


def best_of(calls: dict, repeats: int) -> dict:
    """name -> (best seconds, last value) of each call, the calls taking turns in every round."""
    best = {name: (float("inf"), None) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            value = call()
            best[name] = (min(best[name][0], time.perf_counter() - t0), value)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    rows = []
    for metric, per in cases().items():
        timed = best_of({"block": partial(paired_bootstrap_gain, per, metric, n_boot=1000, seed=0),
                         "loop": partial(loop_bootstrap, per, metric, 1000, seed=0),
                         "scipy": partial(scipy_one_slide, *per[0], metric)}, args.repeats)
        (t_block, g), (t_loop, (low, high)), (t_scipy, _) = timed["block"], timed["loop"], timed["scipy"]
        agree = abs(g["low"] - low) < 1e-9 and abs(g["high"] - high) < 1e-9
        row = {"statistic": metric, "block_s": round(t_block, 4), "loop_s": round(t_loop, 3),
               "scipy_one_slide_s": round(t_scipy, 3), "loop_over_block": round(t_loop / t_block, 1),
               "scipy_one_slide_over_block_four_slides": round(t_scipy / t_block, 1),
               "interval_equal_to_loop": bool(agree)}
        rows.append(row)
        print(f"{metric:18s} block {t_block:7.3f} s   loop {t_loop:7.2f} s ({t_loop / t_block:6.1f}x)   "
              f"scipy, one of the 4 slides {t_scipy:6.2f} s ({t_scipy / t_block:6.1f}x)   "
              f"same interval as the loop: {agree}")
        if not agree:
            raise SystemExit(f"{metric}: the block bootstrap's interval differs from the loop's")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"what": __doc__.split("\n\n")[0], "machine": f"{os.cpu_count()} CPU cores", "n_boot": 1000,
                       "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
