"""The same client script against the reference ipcontroller and against the controller
under test; the SHAPES of what the client sees (keys and value types, recursively) must
match: registration/connection, queue_status, db_query records, result_status and
AsyncResult.metadata.

The reference is always started here (one cluster after the other, each with two engines).
With IPP_TEST_CONTROLLER=reference this compares the reference with itself, which checks
that the script's shapes are stable.
"""

from __future__ import annotations

import datetime as dt
import json

import ipyparallel as ipp
import pytest
import zmq
from jupyter_client.session import Session

from ippcluster import Cluster, controller_under_test

TIMEOUT = 60


@ipp.interactive
def double(x):
    return 2 * x


def shape(value, dynamic: set[str]):
    """A JSON-able description of `value`'s structure: dict keys (msg_ids and uuids replaced
    by placeholders) with the shapes of their values; for lists, the set of element shapes;
    otherwise the type name."""
    if isinstance(value, dict):
        fixed = {}
        varying = set()  # shapes of the values under msg_id / uuid keys, order-independent
        for k, v in value.items():
            if str(k) in dynamic:
                varying.add(json.dumps(shape(v, dynamic), sort_keys=True))
            else:
                fixed[f"{type(k).__name__}:{k}"] = shape(v, dynamic)
        if varying:
            fixed["<dynamic>"] = sorted(varying)
        return fixed
    if isinstance(value, (list, tuple)):
        return ["list", sorted({json.dumps(shape(v, dynamic), sort_keys=True) for v in value})]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, dt.datetime):
        return "datetime"
    return type(value).__name__


def raw_connection_request(client_info: dict) -> dict:
    """connection_request sent by hand on the registration port; the reply's parts."""
    session = Session(
        key=client_info["key"].encode(),
        signature_scheme=client_info["signature_scheme"],
        packer=client_info["pack"],
        unpacker=client_info["unpack"],
    )
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"{client_info['interface']}:{client_info['registration']}")
        session.send(sock, "connection_request", {})
        assert sock.poll(TIMEOUT * 1000), "no connection_reply"
        frames = sock.recv_multipart()
    finally:
        sock.close()
        ctx.term()
    idents, parts = session.feed_identities(frames)
    msg = session.deserialize(parts)
    return {
        "identity_frames": len(idents),
        "frames": len(frames),
        "msg_type": msg["header"]["msg_type"],
        "header": msg["header"],
        "parent_header": msg["parent_header"],
        "metadata": msg["metadata"],
        "content": msg["content"],
    }


def client_script(cluster: Cluster) -> dict:
    """Runs the same work against a cluster and returns the shapes of what came back."""
    rc = cluster.client()
    rc.wait_for_engines(2, timeout=TIMEOUT)
    dynamic = set(rc._engines.values())
    out = {}

    out["connection_reply"] = raw_connection_request(cluster.client_info)
    out["client_engines"] = rc._engines

    direct = rc[0].apply_async(double, 1)
    direct.get(timeout=TIMEOUT)
    lb = rc.load_balanced_view().apply_async(double, 2)
    lb.get(timeout=TIMEOUT)
    ex = rc[1].execute("print('shape')", silent=False, block=False)
    ex.get(timeout=TIMEOUT)
    ex.wait_for_output(timeout=TIMEOUT)
    bcast = rc.broadcast_view().apply_async(double, 3)
    bcast.get(timeout=TIMEOUT)
    ids = direct.msg_ids + lb.msg_ids + ex.msg_ids
    dynamic |= set(ids) | set(bcast.msg_ids)

    out["queue_status"] = rc.queue_status()
    out["queue_status_verbose"] = rc.queue_status(verbose=True)
    for name, ar in (("direct", direct), ("lb", lb), ("execute", ex)):
        out[f"db_record_{name}"] = rc.db_query({"msg_id": ar.msg_ids[0]})
        out[f"metadata_{name}"] = dict(ar.metadata)
    out["db_query_keys"] = rc.db_query(
        {"msg_id": {"$in": ids}}, keys=["submitted", "completed", "engine_uuid", "queue"]
    )
    out["result_status"] = rc.result_status(ids)
    out["result_status_full"] = rc.result_status(ids, status_only=False)
    out["metadata_broadcast"] = [dict(md) for md in bcast.metadata]
    out["hub_history"] = rc.hub_history()
    return {key: shape(value, dynamic) for key, value in out.items()}


@pytest.fixture(scope="module")
def shapes():
    results = {}
    for label, kind in (("reference", "reference"), ("under_test", controller_under_test())):
        cluster = Cluster(kind).start(engines=2)
        try:
            results[label] = client_script(cluster)
        finally:
            cluster.stop()
    return results


ITEMS = [
    "connection_reply",
    "client_engines",
    "queue_status",
    "queue_status_verbose",
    "db_record_direct",
    "db_record_lb",
    "db_record_execute",
    "db_query_keys",
    "result_status",
    "result_status_full",
    "metadata_direct",
    "metadata_lb",
    "metadata_execute",
    "metadata_broadcast",
    "hub_history",
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("item", ITEMS)
def test_shape_matches_the_reference(shapes, item):
    ours = json.dumps(shapes["under_test"][item], indent=1, sort_keys=True)
    ref = json.dumps(shapes["reference"][item], indent=1, sort_keys=True)
    assert ours == ref
