"""Speed of parlab.metrics.pedestrian_metrics on 100,000 x 26 against a per-image loop.

The reference is a straightforward Python loop over images for the
instance-based part (how much PAR code computes it), timed in the same run.

    .venv/bin/python benchmarks/metrics_speed.py
"""

from __future__ import annotations

import time

import numpy as np

from parlab.metrics import pedestrian_metrics


def loop_instance_metrics(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    acc = prec = rec = 0.0
    for y, p in zip(gt, pred):
        inter = float(np.sum(y & p))
        union = float(np.sum(y | p))
        acc += inter / union if union else 0.0
        prec += inter / p.sum() if p.sum() else 0.0
        rec += inter / y.sum() if y.sum() else 0.0
    n = len(gt)
    return acc / n, prec / n, rec / n


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    gt = (rng.random((100_000, 26)) < 0.2).astype(np.int8)
    probs = rng.random((100_000, 26))
    t_std = best_of(lambda: pedestrian_metrics(gt, probs))
    t_bal = best_of(lambda: pedestrian_metrics(gt, probs, balanced=True))
    t_bal_r = best_of(lambda: pedestrian_metrics(gt, probs, balanced=True, selection="random"))
    t_loop = best_of(lambda: loop_instance_metrics(gt == 1, probs > 0.5), repeat=1)
    m = pedestrian_metrics(gt, probs)
    ref = loop_instance_metrics(gt == 1, probs > 0.5)
    assert np.allclose((m.acc, m.prec, m.rec), ref)
    print(f"pedestrian_metrics 100000x26 standard:           {t_std * 1000:8.1f} ms")
    print(f"pedestrian_metrics 100000x26 balanced (first):   {t_bal * 1000:8.1f} ms")
    print(f"pedestrian_metrics 100000x26 balanced (random):  {t_bal_r * 1000:8.1f} ms")
    print(f"per-image loop, instance metrics only:           {t_loop * 1000:8.1f} ms")
    print(f"speed-up of the full vectorised metrics over the loop: {t_loop / t_std:.1f}x")


if __name__ == "__main__":
    from parlab.benchmark_page import recorded

    with recorded(__file__):
        main()
