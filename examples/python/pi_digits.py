#!/usr/bin/env python
"""The seeds' "parallel pi digits" statistics, ported by changing one import line.

The ipyparallel documentation's example counts how often each two-digit sequence (00-99)
occurs in 150 million digits of pi: the digits sit in text files, each engine counts the
pairs in one file (``v.map(compute_two_digit_freqs, files)``), and the client adds the counts
up (``reduce_freqs``). This script does the same on a smaller scale, with the digits
computed here (Machin's formula) instead of downloaded, written as files in a directory the
engines can read (the same machine), and checks the parallel counts against a serial count.

    python examples/python/pi_digits.py --file path/to/ipcontroller-client.json
    python examples/python/pi_digits.py --profile default --digits 200000 --files 8

The only line that differs from the ipyparallel version is the import below (the tests run
this script with it changed back to ``import ipyparallel as ipp``, and nothing else).
Exit status 0 when the parallel counts equal the serial ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import ipp_rs as ipp


def pi_digits(n: int) -> str:
    """The first `n` decimal digits of pi, "3" first (Machin's formula, integers only)."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    scale = 10 ** (n + 10)

    def arctan_inv(x: int) -> int:
        total = term = scale // x
        x2, k, sign = x * x, 3, -1
        while term:
            term //= x2
            total += sign * (term // k)
            sign, k = -sign, k + 2
        return total

    return str(4 * (4 * arctan_inv(5) - arctan_inv(239)))[:n]


# -- the functions of the documentation's pidigits.py (run on the engines) ----------------


def txt_file_to_digits(filename):
    """The digits of a text file of digits, as one numpy array of small ints."""
    with open(filename) as f:
        text = "".join(ch for ch in f.read() if ch.isdigit())
    return numpy.frombuffer(text.encode("ascii"), dtype=numpy.uint8) - 48  # noqa: F821


def one_digit_freqs(digits):
    """How often each digit 0-9 occurs."""
    return numpy.bincount(digits, minlength=10)  # noqa: F821


def two_digit_freqs(digits):
    """How often each two-digit sequence 00-99 occurs (overlapping pairs)."""
    pairs = digits[:-1].astype(numpy.int64) * 10 + digits[1:]  # noqa: F821
    return numpy.bincount(pairs, minlength=100)  # noqa: F821


def compute_two_digit_freqs(filename):
    """Read digits of pi from a file and compute the 2 digit frequencies."""
    return two_digit_freqs(txt_file_to_digits(filename))


def reduce_freqs(freqlist):
    """Add up a list of freq counts to get the total counts."""
    allfreqs = numpy.zeros_like(freqlist[0])  # noqa: F821
    for f in freqlist:
        allfreqs += f
    return allfreqs


# -- the run ---------------------------------------------------------------------------------


def write_pi_files(digits: str, count: int, directory: str) -> list[str]:
    """Splits the digits after "3." into `count` files named like the documentation's
    (pi200m.ascii.01of20 ...), 50 digits a line; returns their paths."""
    body = digits[1:]
    size = -(-len(body) // count)
    files = []
    for i in range(count):
        chunk = body[i * size : (i + 1) * size]
        path = os.path.join(directory, f"pi{len(body)}.ascii.{i + 1:02d}of{count:02d}")
        with open(path, "w") as f:
            f.write("\n".join(chunk[j : j + 50] for j in range(0, len(chunk), 50)) + "\n")
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="the controller's ipcontroller-client.json")
    parser.add_argument("--profile", default=None, help="IPython profile (instead of --file)")
    parser.add_argument("--digits", type=int, default=50_000, help="digits of pi to count")
    parser.add_argument("--files", type=int, default=8, help="files to split the digits in")
    parser.add_argument("--workdir", help="where to write the digit files (default: a temp dir)")
    args = parser.parse_args(argv)

    global numpy
    import numpy

    c = ipp.Client(args.file) if args.file else ipp.Client(profile=args.profile)
    try:
        c.wait_for_engines(1, timeout=60)
        v = c[:]
        v.block = True
        print(f"engines: {c.ids}")

        # "import numpy here and everywhere"; the engines get the counting functions.
        with v.sync_imports(quiet=True):
            import numpy  # noqa: F401,F811
        v.push(
            {
                "txt_file_to_digits": txt_file_to_digits,
                "two_digit_freqs": two_digit_freqs,
            }
        )

        t0 = time.perf_counter()
        digits = pi_digits(args.digits + 1)
        print(f"pi = {digits[0]}.{digits[1:41]}... ({args.digits} digits, "
              f"{time.perf_counter() - t0:.2f} s)")

        # Serial: one-digit frequencies of the first 10,000 digits, as in the documentation.
        head = numpy.frombuffer(digits[1:10_001].encode(), dtype=numpy.uint8) - 48
        freqs = one_digit_freqs(head)
        print("one-digit counts in the first 10,000 digits:",
              " ".join(f"{d}:{n}" for d, n in enumerate(freqs)))

        with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
            files = write_pi_files(digits, args.files, workdir)
            # The parallel calculation: each engine counts the pairs of some files.
            t0 = time.perf_counter()
            freqs_all = v.map(compute_two_digit_freqs, files)
            freqs = reduce_freqs(freqs_all)
            elapsed = time.perf_counter() - t0
            serial = reduce_freqs([compute_two_digit_freqs(f) for f in files])

        pairs = int(freqs.sum())
        order = numpy.argsort(freqs)
        print(f"two-digit counts over {pairs} pairs in {len(files)} files on "
              f"{len(c.ids)} engines: {elapsed:.3f} s")
        print("most frequent:", ", ".join(f"{i:02d}:{freqs[i]}" for i in order[::-1][:5]))
        print("least frequent:", ", ".join(f"{i:02d}:{freqs[i]}" for i in order[:5]))
        expected_pairs = args.digits - len(files)  # pairs do not span two files
        if not numpy.array_equal(freqs, serial) or pairs != expected_pairs:
            print(f"MISMATCH: parallel counts differ from the serial ones "
                  f"({pairs} pairs, expected {expected_pairs})")
            return 1
        print("parallel counts equal the serial counts")
        return 0
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
