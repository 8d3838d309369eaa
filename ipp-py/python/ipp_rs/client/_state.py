"""The Client's read-on-demand state: ``client.results``, ``client.metadata`` (mappings
over the native client's stored replies) and the engine id/uuid map."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterator

from ._metadata import Metadata, build_metadata

if TYPE_CHECKING:
    from .client import Client


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default).encode()


class _ResultsView(Mapping):
    """``client.results``: msg_id -> result, deserialized on access from the native
    client's stored replies (nothing is kept in Python)."""

    def __init__(self, client: "Client"):
        self._client = client

    def __getitem__(self, msg_id: str) -> Any:
        return self._client._result(msg_id)

    def __contains__(self, msg_id: object) -> bool:
        return self._client._has_result(msg_id)

    def _keys(self) -> list:
        client = self._client
        if client._native is None:
            return list(client._hub_results)
        done = client._native.done(client.history)
        return done + [k for k in client._hub_results if k not in set(done)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def pop(self, msg_id: str, *default: Any) -> Any:
        """Removes and returns a result (the native client forgets it)."""
        try:
            value = self[msg_id]
        except KeyError:
            if default:
                return default[0]
            raise
        self._client._forget([msg_id])
        return value

    def clear(self) -> None:
        """Forgets every completed result."""
        self._client._forget(self._keys())

    def __repr__(self) -> str:
        return f"<results of {len(self)} messages>"


class _MetadataView(Mapping):
    """``client.metadata``: msg_id -> :class:`Metadata`, built on access."""

    def __init__(self, client: "Client"):
        self._client = client

    def __getitem__(self, msg_id: str) -> Metadata:
        return build_metadata(self._client, msg_id)

    def __contains__(self, msg_id: object) -> bool:
        client = self._client
        if msg_id in client._hub_metadata:
            return True
        native = client._native
        return native is not None and isinstance(msg_id, str) and (
            native.reply(msg_id) is not None or bool(native.outputs(msg_id))
        )

    def __iter__(self) -> Iterator[str]:
        return iter(_ResultsView(self._client)._keys())

    def __len__(self) -> int:
        return len(_ResultsView(self._client)._keys())

    def pop(self, msg_id: str, *default: Any) -> Any:
        """Removes and returns one message's metadata (the native client forgets it)."""
        if msg_id not in self:
            if default:
                return default[0]
            raise KeyError(msg_id)
        md = self[msg_id]
        self._client._forget([msg_id])
        return md

    def clear(self) -> None:
        """Forgets every completed message."""
        _ResultsView(self._client).clear()


class _EngineMap(dict):
    """id -> uuid, also answering uuid -> id (as ipyparallel's ReverseDict)."""

    def __init__(self, forward: dict):
        super().__init__(forward)
        self._reverse = {uuid: eid for eid, uuid in forward.items()}

    def __getitem__(self, key: Any) -> Any:
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            return self._reverse[key]

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default
