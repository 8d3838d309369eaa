"""The Client's Hub queries (ipyparallel's ``get_result``, ``result_status``,
``queue_status``, ``purge_*``, ``hub_history``, ``db_query``, ``resubmit``): a mixin of
:class:`ipp_rs.client.client.Client`, sent on the native client's query channel."""

from __future__ import annotations

import json
import time
import types
from typing import Any, Optional

from ._deps import deserialize_object, error
from ._metadata import ExecuteReply, Metadata, apply_reply_metadata, parse_date
from ._state import _dumps
from .asyncresult import AsyncHubResult, AsyncResult


class HubQueries:
    """Hub queries and result lookups of the Client."""

    # provided by Client
    _native: Any
    _hub_results: dict
    _hub_metadata: dict
    block: bool
    history: list

    def _query(self, msg_type: str, content: Any) -> tuple:
        """A Hub query; raises the Hub's error, returns (content, buffers)."""
        self._check_open()
        reply, buffers = self._native.query(msg_type, _dumps(content), None)
        if reply.get("status") != "ok":
            raise self._unwrap_exception(reply)
        return reply, buffers

    def get_result(self, indices_or_msg_ids: Any = None, block: Optional[bool] = None, owner: bool = True) -> AsyncResult:
        """An AsyncResult for earlier requests (history indices, msg_ids or AsyncResults);
        results this client no longer holds are fetched from the Hub (AsyncHubResult)."""
        block = self.block if block is None else block
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        ar = self._asyncresult_from_jobs(indices_or_msg_ids, owner=owner)
        if block:
            ar.wait()
        return ar

    def _asyncresult_from_jobs(self, jobs: Any = None, owner: bool = False) -> AsyncResult:
        single = not isinstance(jobs, (list, tuple, set, types.GeneratorType))
        if single:
            jobs = [jobs]
        msg_ids = self._msg_ids_from_jobs(jobs)
        outstanding = self.outstanding
        unknown = [
            m for m in msg_ids if m not in outstanding and not self._has_result(m)
        ]
        children: Any = msg_ids[0] if single and len(msg_ids) == 1 else msg_ids
        if unknown:
            return AsyncHubResult(self, children, owner=owner)
        return AsyncResult(self, children, owner=owner)

    def resubmit(self, indices_or_msg_ids: Any = None, metadata: Any = None, block: Optional[bool] = None) -> AsyncHubResult:
        """Resubmits finished tasks (through the Hub); returns an AsyncHubResult."""
        block = self.block if block is None else block
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        theids = self._msg_ids_from_jobs(indices_or_msg_ids)
        content, _ = self._query("resubmit_request", {"msg_ids": theids})
        mapping = content["resubmitted"]
        ar = AsyncHubResult(self, [mapping[m] for m in theids])
        if block:
            ar.wait()
        return ar

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict:
        """``{'pending': [...], 'completed': [...]}`` for `msg_ids`; with
        ``status_only=False`` also each completed result, keyed by msg_id (fetched from the
        Hub when not held here)."""
        theids = self._msg_ids_from_jobs(msg_ids)
        local = {m: self._result(m) for m in theids if self._has_result(m)}
        remote = [m for m in theids if m not in local]
        if remote:
            content, buffers = self._query(
                "result_request", {"msg_ids": remote, "status_only": status_only}
            )
        else:
            content, buffers = {"status": "ok", "completed": [], "pending": []}, []
        content["completed"].extend(local)
        if status_only:
            return content
        content.update(local)
        failures = self._store_hub_records(content, buffers, remote)
        for msg_id in remote:
            if msg_id in self._hub_results:
                content[msg_id] = self._hub_results[msg_id]
        if len(theids) == 1 and failures:
            raise failures[0]
        error.collect_exceptions(failures, "result_status")
        return content

    def _fetch_hub_results(self, msg_ids: list) -> list:
        """Fetches the completed ones of `msg_ids` from the Hub into this client's cache
        (errors are kept as results, not raised); returns the ids still pending."""
        content, buffers = self._query("result_request", {"msg_ids": msg_ids, "status_only": False})
        self._store_hub_records(content, buffers, msg_ids)
        return list(content.get("pending", []))

    def _store_hub_records(self, content: dict, buffers: Any, msg_ids: list) -> list:
        """Turns a result_reply's records into cached results and metadata; returns the
        failures among them."""
        buffers = list(buffers)
        failures = []
        completed = set(content.get("completed", []))
        for msg_id in sorted(set(msg_ids)):
            if msg_id not in completed or msg_id not in content:
                continue
            rec = content[msg_id]
            parent = rec.get("header") or {}
            header = rec.get("result_header") or {}
            rcontent = rec.get("result_content") or {}
            if isinstance(rcontent, str):
                rcontent = json.loads(rcontent)
            md = Metadata(msg_id=msg_id)
            fake = _HubReply(
                msg_id, header, parent, rec.get("result_metadata") or {}, rcontent, rec.get("received")
            )
            apply_reply_metadata(self, md, fake)
            if rec.get("received"):
                md["received"] = parse_date(rec["received"])
            md.update(rec.get("io") or {})
            if rcontent.get("status") == "ok":
                msg_type = header.get("msg_type")
                if msg_type == "apply_reply":
                    res, buffers = deserialize_object(buffers)
                elif msg_type == "execute_reply":
                    res = ExecuteReply(msg_id, rcontent, md)
                else:
                    raise KeyError(f"unhandled msg type: {msg_type!r}")
            elif rcontent.get("status") == "aborted":
                res = error.TaskAborted(msg_id)
                failures.append(res)
            else:
                res = self._unwrap_exception(rcontent)
                failures.append(res)
            self._hub_results[msg_id] = res
            self._hub_metadata[msg_id] = md
        return failures

    def queue_status(self, targets: Any = "all", verbose: bool = False) -> dict:
        """Queue lengths (or msg_id lists with ``verbose``) per engine, plus
        ``'unassigned'``."""
        engine_ids = None if targets == "all" else self._build_targets(targets)[1]
        content, _ = self._query("queue_request", {"targets": engine_ids, "verbose": verbose})
        content = dict(content)
        content.pop("status", None)
        status = {}
        for key, value in content.items():
            try:
                status[int(key)] = value
            except (TypeError, ValueError):
                status[key] = value
        if isinstance(targets, int):
            return status[targets]
        return status

    def _msg_ids_from_target(self, targets: Any = None) -> list:
        if not targets:
            return []
        uuids = {u.decode() for u in self._build_targets(targets)[0]}
        found = []
        for msg_id in self.results:
            md = self.metadata[msg_id]
            if md["engine_uuid"] in uuids:
                found.append(msg_id)
        return found

    def purge_local_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """Forgets held results and metadata of `jobs` (or 'all') and/or of all requests
        that ran on `targets`; RuntimeError if some are still outstanding."""
        if not targets and not jobs:
            raise ValueError("Must specify at least one of `targets` and `jobs`")
        outstanding = self.outstanding
        if jobs == "all":
            if outstanding:
                raise RuntimeError(f"Can't purge outstanding tasks: {outstanding}")
            self._forget(list(self.results) + list(self._hub_results))
            return
        msg_ids = set(self._msg_ids_from_target(targets))
        msg_ids.update(self._msg_ids_from_jobs(jobs))
        still = outstanding.intersection(msg_ids)
        if still:
            raise RuntimeError(f"Can't purge outstanding tasks: {still}")
        self._forget(list(msg_ids))

    def purge_hub_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """Tells the Hub to forget the records of `jobs` (or 'all') and/or of `targets`."""
        if not targets and not jobs:
            raise ValueError("Must specify at least one of `targets` and `jobs`")
        if targets:
            targets = self._build_targets(targets)[1]
        msg_ids = jobs if jobs == "all" else self._msg_ids_from_jobs(jobs)
        self._query("purge_request", {"engine_ids": targets, "msg_ids": msg_ids})

    def purge_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """purge_local_results and purge_hub_results with the same arguments."""
        self.purge_local_results(jobs=jobs, targets=targets)
        self.purge_hub_results(jobs=jobs, targets=targets)

    def purge_everything(self) -> None:
        """purge_results('all') and clears the history."""
        self.purge_results("all")
        self.history = []

    def hub_history(self) -> list:
        """Every msg_id the Hub has recorded, by submission time."""
        content, _ = self._query("history_request", {})
        return content["history"]

    def db_query(self, query: dict, keys: Any = None) -> list:
        """Task records of the Hub's database matching a mongodb-style `query`
        (fields `keys`, default all but buffers)."""
        if isinstance(keys, str):
            keys = [keys]
        content, buffers = self._query("db_request", {"query": query, "keys": keys})
        records = content["records"]
        buffer_lens = content.get("buffer_lens")
        result_buffer_lens = content.get("result_buffer_lens")
        buffers = list(buffers)
        for i, rec in enumerate(records):
            for hkey in ("header", "result_header"):
                if isinstance(rec.get(hkey), dict):
                    rec[hkey] = {k: parse_date(v) if k == "date" else v for k, v in rec[hkey].items()}
            for dtkey in ("submitted", "started", "completed", "received"):
                if dtkey in rec:
                    rec[dtkey] = parse_date(rec[dtkey])
            if buffer_lens is not None:
                n = buffer_lens[i]
                rec["buffers"], buffers = buffers[:n], buffers[n:]
            if result_buffer_lens is not None:
                n = result_buffer_lens[i]
                rec["result_buffers"], buffers = buffers[:n], buffers[n:]
        return records


class _HubReply:
    """A Hub task record shaped like a native Reply, for the metadata builder."""

    def __init__(self, msg_id: str, header: dict, parent: dict, metadata: dict, content: dict, received: Any):
        self.msg_id = msg_id
        self.header = header
        self.parent_header = parent
        self.metadata = metadata
        self.content = content
        parsed = parse_date(received)
        self.received = parsed.timestamp() if hasattr(parsed, "timestamp") else time.time()
