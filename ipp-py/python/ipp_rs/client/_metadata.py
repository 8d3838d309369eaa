"""Per-message metadata (ipyparallel's ``Metadata`` dict) and ``ExecuteReply``, built on
demand from the native client's stored reply and IOPub outputs: nothing is kept in Python
for a result until someone asks for it."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from ._deps import deserialize_object

if TYPE_CHECKING:
    from .client import Client

# carriage-return handling of streams, as ipyparallel's client
_cr_pat = re.compile(r".*\r(?=[^\n])")

_DATE_FIELDS = ("submitted", "started", "completed", "received")


def parse_date(value: Any) -> Any:
    """An ISO 8601 text as an aware datetime (naive texts are taken as UTC); anything else
    (None, a datetime, text that is not a date) is returned unchanged."""
    if not isinstance(value, str) or len(value) < 10:
        return value
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return value
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp


def utc_from_timestamp(seconds: Optional[float]) -> Optional[datetime]:
    """A ``time.time()`` value as an aware UTC datetime."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc)


def utcnow() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(timezone.utc)


class Metadata(dict):
    """The metadata of one request (ipyparallel's ``Metadata``): a dict with a fixed set of
    keys, also readable as attributes. Adding a key that is not in the set raises."""

    def __init__(self, *args: Any, **kwargs: Any):
        dict.__init__(self)
        dict.update(
            self,
            {
                "msg_id": None,
                "submitted": None,
                "started": None,
                "completed": None,
                "received": None,
                "engine_uuid": None,
                "engine_id": None,
                "follow": None,
                "after": None,
                "status": None,
                "execute_input": None,
                "execute_result": None,
                "error": None,
                "stdout": "",
                "stderr": "",
                "outputs": [],
                "data": {},
                "label": None,
            },
        )
        self.update(dict(*args, **kwargs))

    def __getattr__(self, key: str) -> Any:
        if key in self:
            return self[key]
        raise AttributeError(key)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self:
            self[key] = value
        else:
            raise AttributeError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self:
            dict.__setitem__(self, key, value)
        else:
            raise KeyError(key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """As dict.update; keys ipyparallel's client also adds (is_broadcast, ...) are
        accepted, as they are there."""
        dict.update(self, *args, **kwargs)


def apply_reply_metadata(client: "Client", md: Metadata, reply: Any) -> None:
    """Fills `md` from a native Reply, as ipyparallel's ``Client._extract_metadata``."""
    meta = reply.metadata
    content = reply.content
    header = reply.header
    parent = reply.parent_header
    engine_uuid = meta.get("engine") or meta.get("engine_uuid")
    md.update(
        {
            "msg_id": reply.msg_id,
            "received": utc_from_timestamp(reply.received),
            "engine_uuid": engine_uuid,
            "follow": meta.get("follow", []),
            "after": meta.get("after", []),
            "status": content.get("status"),
            "is_broadcast": meta.get("is_broadcast", False),
            "is_coalescing": meta.get("is_coalescing", False),
            "label": meta.get("label", None),
        }
    )
    if engine_uuid is not None:
        engine_id = meta.get("engine_id")
        md["engine_id"] = engine_id if engine_id is not None else client._engine_id(engine_uuid)
    if md["is_coalescing"]:
        targets = meta.get("broadcast_targets", [])
        pairs = [t if isinstance(t, (list, tuple)) else (t, client._engine_id(t)) for t in targets]
        md["engine_uuid"] = [p[0] for p in pairs]
        md["engine_id"] = [p[1] for p in pairs]
    if "date" in parent:
        md["submitted"] = parse_date(parent["date"])
    if "started" in meta:
        md["started"] = parse_date(meta["started"])
    if "date" in header:
        md["completed"] = parse_date(header["date"])


def apply_outputs(client: "Client", md: Metadata, outputs: list) -> None:
    """Folds the IOPub messages of one request into `md` (streams accumulate with ``\\r``
    handling, display_data into ``outputs``, ...), as ipyparallel's iopub handler."""
    for item in outputs:
        msg_type, content = item[0], item[1]
        if msg_type == "stream":
            name = content.get("name", "stdout")
            text = content.get("text", "")
            new_text = (md.get(name) or "") + text
            if "\r" in text:
                new_text = _cr_pat.sub("", new_text)
            md[name] = new_text
        elif msg_type == "error":
            md["error"] = client._unwrap_exception(dict(content))
        elif msg_type == "execute_input":
            md["execute_input"] = content.get("code")
        elif msg_type == "display_data":
            md["outputs"] = md["outputs"] + [content]
        elif msg_type == "execute_result":
            md["execute_result"] = content
        elif msg_type == "data_message":
            buffers = item[2] if len(item) > 2 else content.get("buffers")
            if buffers:
                data, _ = deserialize_object(list(buffers))
                md["data"] = {**md["data"], **data}


def build_metadata(client: "Client", msg_id: str, submitted: Optional[float] = None) -> Metadata:
    """The current metadata of `msg_id` from the native client (reply and outputs so far)."""
    md = Metadata(msg_id=msg_id)
    if submitted is not None:
        md["submitted"] = utc_from_timestamp(submitted)
    hub = client._hub_metadata.get(msg_id)
    if hub is not None:
        md.update(hub)
        return md
    native = client._native
    if native is None:
        return md
    reply = native.reply(msg_id)
    if reply is not None:
        apply_reply_metadata(client, md, reply)
    apply_outputs(client, md, native.outputs(msg_id))
    return md


class ExecuteReply:
    """The result of an ``execute`` on one engine: the execution count, with the
    ``execute_result`` display data of the engine (shown like IPython's ``Out[...]``)."""

    def __init__(self, msg_id: str, content: dict, metadata: Any):
        self.msg_id = msg_id
        self._content = content
        self.execution_count = content.get("execution_count")
        self._md = metadata  # a Metadata, or a callable building it when first needed

    @property
    def metadata(self) -> Metadata:
        """The request's metadata (execute_result, stdout, engine_id, ...)."""
        if callable(self._md):
            self._md = self._md()
        return self._md

    def _materialize(self) -> None:
        """Builds the metadata now (before the native client forgets the message)."""
        self.metadata  # noqa: B018

    @property
    def _execute_result(self) -> dict:
        return self.metadata.get("execute_result") or {}

    @property
    def source(self) -> Any:
        return self._execute_result.get("source", "") if self._execute_result else None

    @property
    def data(self) -> dict:
        return self._execute_result.get("data", {})

    @property
    def _metadata(self) -> dict:
        return self._execute_result.get("metadata", {})

    def display(self) -> None:
        """Publishes the result's display data (in IPython)."""
        from IPython.display import publish_display_data

        publish_display_data(self.data, self.metadata)

    def _repr_mime_(self, mime: str) -> Any:
        if mime not in self.data:
            return None
        data = self.data[mime]
        if mime in self._metadata:
            return data, self._metadata[mime]
        return data

    def _repr_html_(self) -> Any:
        return self._repr_mime_("text/html")

    def _repr_latex_(self) -> Any:
        return self._repr_mime_("text/latex")

    def _repr_json_(self) -> Any:
        return self._repr_mime_("application/json")

    def _repr_javascript_(self) -> Any:
        return self._repr_mime_("application/javascript")

    def _repr_png_(self) -> Any:
        return self._repr_mime_("image/png")

    def _repr_jpeg_(self) -> Any:
        return self._repr_mime_("image/jpeg")

    def _repr_svg_(self) -> Any:
        return self._repr_mime_("image/svg+xml")

    def _repr_markdown_(self) -> Any:
        return self._repr_mime_("text/markdown")

    def _repr_mimebundle_(self, *args: Any, **kwargs: Any) -> Any:
        data, md = self.data, self.metadata
        if "text/plain" in data:
            data = dict(data)
            data["text/plain"] = self._plaintext()
        return data, md

    def __getitem__(self, key: str) -> Any:
        return self.metadata[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        md = self.metadata
        if key not in md:
            raise AttributeError(key)
        return md[key]

    def __repr__(self) -> str:
        text_out = self.data.get("text/plain", "")
        if len(text_out) > 32:
            text_out = text_out[:29] + "..."
        return f"<ExecuteReply[{self.execution_count}]: {text_out}>"

    def _plaintext(self) -> str:
        text_out = self.data.get("text/plain", "")
        if not text_out:
            return ""
        colored = False
        ip = _get_ipython()
        if ip is not None:
            colors = getattr(ip, "colors", "NoColor")
            colored = str(colors).lower() != "nocolor"
        out, normal = ("\033[0;31m", "\033[0m") if colored else ("", "")
        if "\n" in text_out and not text_out.startswith("\n"):
            text_out = "\n" + text_out
        return f"{out}Out[{self.metadata['engine_id']}:{self.execution_count}]: {normal}{text_out}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self._plaintext())


def _get_ipython() -> Any:
    """IPython's running shell, or None (without importing IPython if nobody has)."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


__all__ = ["Metadata", "ExecuteReply", "build_metadata", "parse_date"]
