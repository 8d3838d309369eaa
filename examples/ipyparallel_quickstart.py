"""Quickstart: the real ipyparallel client doing real work through our Rust controller.

Run by ``scripts/quickstart.sh``, which starts the controller and two ``ipengine``s and
points ``IPYTHONDIR`` at a throw-away profile. It computes the first digits of pi on one
engine, counts digit frequencies in parallel (the seeds' "parallel pi digits" statistics),
estimates pi by Monte Carlo with load balancing, and prints a timing table.
"""

import os
import sys
import time

import ipyparallel as ipp


def pi_digits(n):
    """The first n decimal digits of pi (Machin's formula with integers)."""
    import sys

    sys.set_int_max_str_digits(0)  # Python 3.11 limits int -> str conversions
    scale = 10 ** (n + 10)

    def arctan_inv(x):
        total = term = scale // x
        x2, k, sign = x * x, 3, -1
        while term:
            term //= x2
            total += sign * (term // k)
            sign, k = -sign, k + 2
        return total

    pi = 4 * (4 * arctan_inv(5) - arctan_inv(239))
    return str(pi)[: n]


def digit_counts(digits):
    """How often each digit 0-9 occurs in a string of digits."""
    counts = [0] * 10
    for d in digits:
        counts[ord(d) - 48] += 1
    return counts


def monte_carlo_pi(samples, seed):
    """Hits inside the unit quarter circle out of `samples` random points."""
    import random

    rng = random.Random(seed)
    return sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def noop(x=None):
    return x


def main():
    security = os.path.join(os.environ["IPYTHONDIR"], "profile_default", "security")
    rc = ipp.Client(os.path.join(security, "ipcontroller-client.json"))
    rc.wait_for_engines(2, timeout=60)
    dv, lb = rc[:], rc.load_balanced_view()
    print(f"connected to engines {rc.ids}")
    timings = []

    def timed(label, fn):
        start = time.perf_counter()
        value = fn()
        timings.append((label, time.perf_counter() - start))
        return value

    n = 20_000
    digits = timed(f"{n} digits of pi on engine 0", lambda: rc[0].apply_sync(pi_digits, n))
    print(f"pi = {digits[0]}.{digits[1:51]}...")

    dv.scatter("chunk", digits, block=True)
    per_engine = timed("digit counts on the scattered chunks",
                       lambda: dv.apply_sync(digit_counts, ipp.Reference("chunk")))
    totals = [sum(col) for col in zip(*per_engine)]
    print("digit frequencies:", ", ".join(f"{d}:{c}" for d, c in enumerate(totals)))
    assert sum(totals) == n

    chunks = 32
    hits = timed(f"Monte Carlo pi, {chunks} load-balanced tasks",
                 lambda: lb.map_sync(monte_carlo_pi, [50_000] * chunks, range(chunks)))
    print(f"Monte Carlo pi ~ {4 * sum(hits) / (50_000 * chunks):.5f}")

    tasks = 1000
    timed(f"{tasks} no-op tasks (load-balanced map)", lambda: lb.map_sync(noop, range(tasks)))
    timed("one no-op round trip (direct)", lambda: rc[0].apply_sync(noop))

    print("\n| step | seconds |\n|---|---|")
    for label, seconds in timings:
        print(f"| {label} | {seconds:.4f} |")
    rc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
