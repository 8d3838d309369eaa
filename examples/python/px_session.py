#!/usr/bin/env python
"""The seeds' interactive ``%px`` session, replayed in an IPython shell.

The ipyparallel documentation ("Parallel Magic Commands") shows an IPython session driving
the engines with ``%px``, ``%%px`` (``--targets``, ``--[no]block``, ``--group-outputs``),
``%pxresult``, ``%autopx``, ``%pxconfig`` and views activated with a suffix. This script runs
those cells, in order, in an in-process IPython shell (the magics are registered by creating
the client, as in the documentation), prints the transcript and checks that each cell shows
what the documentation says it shows. Python 3 spelling (``print('hi')``), two or more
engines (``::2`` is then engine 0 and every other one), and no engine-side magics
(``%px %pylab`` needs an IPython kernel on the engines).

    python examples/python/px_session.py --file path/to/ipcontroller-client.json

The only line that differs from the ipyparallel version is the import below (the tests also
run this script with it changed back to ``import ipyparallel as ipp``). Exit status 0 when
every cell showed what was expected.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from contextlib import redirect_stderr, redirect_stdout

import ipp_rs as ipp


ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Prefix of the cells that are expected to raise (a remote error).
RAISES = "#raises\n"


def session(engines: list[int]) -> list[tuple[str, list[str]]]:
    """The cells of the session and, for each, regular expressions its output must match
    (anywhere in it: ``[stdout:0]`` and the text may be on two lines)."""
    even = engines[::2]
    return [
        ("with rc[:].sync_imports():\n    import numpy", []),
        ("%px a = numpy.random.rand(2,2)", []),
        ("%px numpy.linalg.eigvals(a)", [rf"Out\[{e}:\d+\]: array\(\[" for e in engines]),
        ("%px print('hi')", [rf"\[stdout:{e}\]\s*hi" for e in engines]),
        ("%%px --targets ::2\nprint('I am even')", [rf"\[stdout:{e}\]\s*I am even" for e in even]),
        ("%%px --targets 1\nprint('I am number 1')", [r"I am number 1"]),
        ("%%px\nprint(\"still 'all' by default\")",
         [rf"\[stdout:{e}\]\s*still 'all' by default" for e in engines]),
        ("%%px --noblock\nimport time\ntime.sleep(0.1)\ntime.time()",
         [r"AsyncResult"]),
        ("%pxresult", [rf"Out\[{e}:\d+\]: \d+\.\d+" for e in engines]),
        ("%%px --block --group-outputs=engine\nimport numpy as np\nA = np.random.random((2,2))\n"
         "ev = numpy.linalg.eigvals(A)\nprint(ev)\nev.max()",
         [rf"\[stdout:{e}\]\s*\[" for e in engines] + [rf"Out\[{e}:\d+\]: " for e in engines]),
        ("dv = rc[:]\ndv.block = False", []),
        ("%autopx", [r"%autopx enabled"]),
        ("max_evals = []", []),
        ("for i in range(100):\n    a = numpy.random.rand(10,10)\n    a = a+a.transpose()\n"
         "    evals = numpy.linalg.eigvals(a)\n    max_evals.append(evals[0].real)", []),
        ("print('Average max eigenvalue is: %f' % (sum(max_evals)/len(max_evals)))",
         [rf"\[stdout:{e}\]\s*Average max eigenvalue is: \d+\.\d+" for e in engines]),
        ("%autopx", [r"%autopx disabled"]),
        ("%pxconfig --block", []),
        ("%px print('hi')", [rf"\[stdout:{e}\]\s*hi" for e in engines]),
        ("%pxconfig --targets ::2", []),
        ("%px print('hi')", [rf"\[stdout:{e}\]\s*hi" for e in even]),
        ("%pxconfig --noblock", []),
        ("%px print('are you there?')", [r"AsyncResult"]),
        ("%pxresult", [rf"\[stdout:{e}\]\s*are you there\?" for e in even]),
        ("even = rc[::2]\neven.activate()", []),
        ("%px print('hi')", [r"AsyncResult"]),
        ("even.block = True", []),
        ("%px print('hi')", [rf"\[stdout:{e}\]\s*hi" for e in even]),
        ("rc.activate()", [r"DirectView"]),
        ("even.activate('_even')", []),
        ("%px print('hi all')", [rf"\[stdout:{e}\]\s*hi all" for e in engines]),
        ("%px_even print(\"We aren't odd!\")", [rf"\[stdout:{e}\]\s*We aren't odd!" for e in even]),
        # an error on the engines: the shell shows each engine's traceback and raises
        (RAISES + "%px x = 1 / 0", [rf"\[{e}:execute\]" for e in engines] + [r"ZeroDivisionError"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="the controller's ipcontroller-client.json")
    parser.add_argument("--profile", default=None, help="IPython profile (instead of --file)")
    args = parser.parse_args(argv)

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns["ipp"] = ipp
    failures = []
    # In [1]: the client registers the %px magics with the running IPython
    first_cell = f"rc = ipp.Client({args.file!r})" if args.file else (
        f"rc = ipp.Client(profile={args.profile!r})"
    )
    cells = [(first_cell + "\nrc.wait_for_engines(2, timeout=60)", [])]
    rc = None
    number = 0
    while cells:
        cell, expected = cells.pop(0)
        number += 1
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            result = shell.run_cell(cell, store_history=True)
        text = ANSI.sub("", out.getvalue())
        prompt = f"In [{number}]: "
        print(prompt + cell.replace("\n", "\n" + " " * (len(prompt) - 5) + "...: "))
        if text.strip():
            print(text.rstrip())
        print()
        if rc is None:
            rc = shell.user_ns.get("rc")
            if rc is None or not result.success:
                print("could not create the client", file=sys.stderr)
                return 1
            cells = session(sorted(rc.ids))
            continue
        should_raise = cell.startswith(RAISES)
        if result.success == should_raise:
            what = "raised" if should_raise is False else "did not raise"
            failures.append(f"In [{number}] {what}: {result.error_in_exec!r}")
        for pattern in expected:
            if not re.search(pattern, text, re.M):
                failures.append(f"In [{number}] {cell.splitlines()[0]!r}: no match for {pattern!r}")
    try:
        rc.close()
    except Exception:
        pass
    for failure in failures:
        print("FAILED:", failure)
    print(f"{number} cells, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
