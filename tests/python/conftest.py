"""Fixtures for the interop suite: a controller (ours or the reference, see ippcluster.py)
with real ipengine processes, driven by the real ipyparallel client."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ippcluster import Cluster, controller_under_test  # noqa: E402


def pytest_configure(config):
    # A shell starts background jobs with SIGINT ignored, and Python then never installs
    # its KeyboardInterrupt handler: the Ctrl-C tests need it whatever started pytest.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config):
    return f"controller under test: {controller_under_test()} (IPP_TEST_CONTROLLER)"


@pytest.fixture(scope="module")
def cluster():
    """The controller under test with two registered engines, for one test module."""
    c = Cluster().start(engines=2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rc(cluster):
    """A client of the module's cluster that already sees both engines."""
    client = cluster.client()
    client.wait_for_engines(2, timeout=60)
    return client


@pytest.fixture
def new_client(cluster):
    """Factory for extra clients of the module's cluster (closed with the cluster)."""
    return cluster.client
