"""Runs Python processes as if ipyparallel were not installed: a ``sitecustomize`` on
``PYTHONPATH`` puts a ``sys.meta_path`` finder first that refuses ``ipyparallel`` and its
submodules (``ModuleNotFoundError``, as for a missing package).
"""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = '''
import sys


class _NoIpyparallel:
    """Test harness: ipyparallel is "not installed" in this process."""

    def find_spec(self, name, path=None, target=None):
        if name == "ipyparallel" or name.startswith("ipyparallel."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None


sys.meta_path.insert(0, _NoIpyparallel())
'''


def blocking_env(directory: Path, env: dict | None = None) -> dict:
    """A copy of `env` (default: os.environ) whose Python processes cannot import
    ipyparallel; the sitecustomize is written into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ if env is None else env)
    previous = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(directory) + (os.pathsep + previous if previous else "")
    return env
