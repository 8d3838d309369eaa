"""Finding a cluster's connection file (``ipcontroller[-<cluster_id>]-client.json`` in a
profile's ``security`` folder), as ipyparallel's ``Client`` does."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional

_NO_CONTROLLER = (
    "You have attempted to connect to an IPython Cluster but no Controller could be found.\n"
    "Please double-check your configuration and ensure that a cluster is running."
)


def _ipython_dir() -> str:
    """$IPYTHONDIR, else ~/.ipython (as IPython's get_ipython_dir)."""
    env = os.environ.get("IPYTHONDIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".ipython")


def _compress_user(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home) else path


def _profile_security_dir(profile: str, profile_dir: Optional[str], ipython_dir: Optional[str]) -> Optional[str]:
    """The security folder of the profile, or None when the profile folder does not exist."""
    if profile_dir is not None:
        path = os.path.abspath(os.path.expanduser(profile_dir))
    else:
        path = os.path.join(ipython_dir or _ipython_dir(), f"profile_{profile}")
    if not os.path.isdir(path):
        return None
    return os.path.join(path, "security")


def _default_profile() -> str:
    """The running IPython application's profile, else 'default'."""
    if "IPython" in sys.modules:
        try:
            from IPython.core.application import BaseIPythonApplication

            if BaseIPythonApplication.initialized():
                return BaseIPythonApplication.instance().profile
        except Exception:  # noqa: BLE001 - another Application subclass is running
            pass
    return "default"


def _load_connection_info(
    connection_info: Any,
    profile: str,
    profile_dir: Optional[str],
    ipython_dir: Optional[str],
    cluster_id: Optional[str],
    timeout: float,
) -> dict:
    """The connection dict, from a dict, a file path, or the profile's security folder
    (waiting up to `timeout` seconds for the file to appear, as ipyparallel)."""
    if isinstance(connection_info, dict):
        return dict(connection_info)
    if connection_info is None:
        security = _profile_security_dir(profile, profile_dir, ipython_dir)
        if security is None:
            raise OSError(_NO_CONTROLLER)
        name = f"ipcontroller-{cluster_id}-client.json" if cluster_id else "ipcontroller-client.json"
        path = os.path.join(security, name)
        if not os.path.exists(path):
            print(f"Waiting for connection file: {_compress_user(path)}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not os.path.exists(path):
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        if not os.path.exists(path):
            raise OSError(f"Connection file {_compress_user(path)!r} not found.\n{_NO_CONTROLLER}")
    else:
        path = os.fspath(connection_info)
        if "://" in path:
            raise ValueError(
                f"single urls ({path!r}) cannot be specified, url-files must be used."
            )
        if not os.path.exists(path):
            raise OSError(
                f"Connection file {_compress_user(path)} not found. Is a controller running?"
            )
    with open(path) as f:
        return json.load(f)
