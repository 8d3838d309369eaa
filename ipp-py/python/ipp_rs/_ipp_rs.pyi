"""Type stubs for the native module ``ipp_rs._ipp_rs``."""

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Tuple, Union, final

from typing_extensions import Self

__all__ = [
    "__version__",
    "init_logging",
    "Controller",
    "Engine",
    "NativeClient",
    "OutputSink",
    "Reply",
]

__version__: str

def init_logging(level: str = "info") -> None:
    """Install a tracing subscriber on stderr ($IPP_RS_LOG overrides ``level``)."""

@final
class OutputSink:
    """Where a running request's output goes (published on the engine's IOPub)."""

    def stream(self, name: str, text: str) -> None: ...
    def execute_input(self, code: str, execution_count: int) -> None: ...
    def execute_result(self, data: str, metadata: str, execution_count: int) -> None: ...
    def display_data(self, data: str, metadata: str) -> None: ...

_ApplyReply = Union[
    Tuple[str, Sequence[Any]],  # ("ok", buffers): bytes, memoryview or any buffer
    Tuple[str, str, str, Sequence[str]],  # ("error", ename, evalue, traceback)
    Tuple[str],  # ("unmet",)
]
_ExecuteReply = Union[
    Tuple[str, int],  # ("ok", execution_count)
    Tuple[str, str, str, Sequence[str]],
]

class _Kernel(Protocol):
    def apply(self, msg_id: str, buffers: list[bytes], sink: OutputSink) -> _ApplyReply: ...
    def execute(self, code: str, silent: bool, sink: OutputSink) -> _ExecuteReply: ...
    def clear(self) -> None: ...

@final
class Engine:
    """An engine whose requests run as Python code on the thread calling ``serve``."""

    def __new__(cls, connection_info: str, requested_id: Optional[int] = None) -> Self: ...
    @property
    def id(self) -> Optional[int]: ...
    @property
    def uuid(self) -> Optional[str]: ...
    @property
    def busy(self) -> bool: ...
    def stop(self) -> None: ...
    def serve(self, kernel: _Kernel) -> None: ...

@final
class Controller:
    """An IPython Parallel controller (Hub and schedulers) running in this process.

    The constructor records the settings; ``start()`` binds the sockets and writes
    ``<profile_dir>/security/ipcontroller[-<cluster_id>]-{client,engine}.json``.
    """

    def __new__(
        cls,
        ip: str = "127.0.0.1",
        *,
        location: Optional[str] = None,
        ports: Optional[Sequence[int]] = None,
        scheme: str = "leastload",
        hwm: int = 1,
        db: str = "dictdb",
        db_path: Optional[str] = None,
        ping: Optional[int] = None,
        key: Optional[str] = None,
        profile_dir: Optional[str] = None,
        cluster_id: str = "",
        registration_timeout: Optional[float] = None,
    ) -> Self: ...
    def start(self) -> Self: ...
    def stop(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def client_info(self) -> dict[str, Any]: ...
    @property
    def engine_info(self) -> dict[str, Any]: ...
    @property
    def client_file(self) -> Optional[Path]: ...
    @property
    def engine_file(self) -> Optional[Path]: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *args: object) -> bool: ...

_Buffer = Union[bytes, bytearray, memoryview, Any]  # anything with the buffer protocol

@final
class Reply:
    """One reply, immutable; each field is parsed the first time it is read (and cached).

    Synthetic replies (``synthetic=True``) are made by the client for a request that can no
    longer be answered: content ``{"status": "error", "ename": "EngineError" | "ConnectionError"
    | "TimeoutError", "evalue": ..., "traceback": [...], "engine_info": {...}}`` and metadata
    ``{"engine_id"?, "engine_uuid"?, "status": "error"}``; msg_type is the request's type with
    ``_request`` replaced by ``_reply``. Exception: a ``shutdown_request`` whose engine
    unregisters before its reply arrives gets a synthetic ``{"status": "ok", "restart":
    False}`` reply (the engine did shut down).
    """

    @property
    def msg_id(self) -> str:
        """The request's msg_id (a ``<msg_id>_<uuid>`` sub-id for non-coalescing broadcasts)."""
    @property
    def msg_type(self) -> str: ...
    @property
    def header(self) -> dict[str, Any]:
        """The reply header (dates as ISO text)."""
    @property
    def parent_header(self) -> dict[str, Any]: ...
    @property
    def metadata(self) -> dict[str, Any]:
        """As the engine or scheduler sent it (``engine`` is the engine uuid; engines send
        no ``engine_id``, synthetic replies do)."""
    @property
    def content(self) -> dict[str, Any]: ...
    @property
    def status(self) -> Optional[str]:
        """``content["status"]`` (``"ok"``, ``"error"``, ``"aborted"``, ...), or None if the
        content has none, read without building the content dict."""
    @property
    def buffers(self) -> list[memoryview]:
        """The reply's buffers: read-only memoryviews over ``bytes`` copied once from the
        frames (the abi3-py39 stable ABI has no buffer protocol for native classes)."""
    @property
    def synthetic(self) -> bool: ...
    @property
    def received(self) -> float:
        """``time.time()`` when the reply arrived."""

@final
class Completions:
    """Ids of a set of requests, handed out as their replies arrive."""

    @property
    def remaining(self) -> int:
        """How many ids have not been handed out yet."""
    def next(self, timeout: Optional[float] = None) -> list[str]:
        """Blocks (GIL released, Ctrl-C checked) until at least one id not handed out yet
        has its reply, or `timeout` seconds; the ids finished since the last call (``[]``
        on timeout, or at once when all were handed out)."""

class NativeClient:
    """The networking half of ``ipp_rs.Client``: sockets, signing, JSON framing and reply
    bookkeeping in Rust. Every blocking call releases the GIL and runs Python signal
    handlers at least every 100 ms (Ctrl-C works).

    Ids the client does not track (sent with ``track=False``, forgotten, or never sent)
    count as done in ``wait``/``wait_any``/``wait_outputs`` (nothing will arrive for them)
    but not in ``done``, and ``reply`` returns None for them.
    """

    def __new__(cls, connection_info: str, *, connect_timeout: float = 10.0) -> Self:
        """``connection_info``: the JSON text of an ipcontroller-client.json. Raises
        TimeoutError when the controller does not answer within ``connect_timeout``,
        ConnectionError when a socket cannot be opened, ValueError for a bad file."""
    @property
    def session_id(self) -> str: ...
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (an addition to the contract)."""
    def ids(self) -> list[int]: ...
    def engines(self) -> dict[int, str]: ...
    def wait_for_engines(self, n: int, timeout: Optional[float] = None) -> list[int]:
        """Blocks until ``n`` engines registered; TimeoutError says how many came."""
    def send(
        self,
        channel: str,
        msg_type: str,
        content: _Buffer,
        metadata: _Buffer,
        buffers: Sequence[_Buffer],
        targets: Optional[Sequence[int]] = None,
        coalescing: bool = False,
        track: bool = True,
    ) -> list[str]:
        """Signs and sends a request on "mux", "task", "broadcast" or "control"; returns
        the msg_ids its replies will carry (see the contract). ``targets=None`` means every
        registered engine for mux, control and broadcast (an addition); unknown ids raise
        IndexError naming them, an empty list ValueError. content/metadata that are not
        JSON objects raise ValueError. ``bytes`` buffers of 64 KiB or more are sent without
        copying; other buffers are copied once. ConnectionError once closed."""
    def send_many(
        self,
        channel: str,
        msg_type: str,
        requests: Sequence[Tuple[_Buffer, _Buffer, Sequence[_Buffer]]],
    ) -> list[str]:
        """Load-balanced requests (channel must be "task") in one hop; one msg_id each."""
    def wait(self, msg_ids: Sequence[str], timeout: Optional[float] = None) -> bool: ...
    def completions(self, msg_ids: Sequence[str]) -> Completions:
        """The ids handed out as their replies arrive (those done already first)."""
    def wait_any(self, msg_ids: Sequence[str], timeout: Optional[float] = None) -> list[str]:
        """Returns the done ids (those with a reply, plus untracked ones) once at least
        one is done, or at the timeout; ``[]`` for no ids."""
    def done(self, msg_ids: Sequence[str]) -> list[str]: ...
    def outstanding(self) -> set[str]: ...
    def reply(self, msg_id: str) -> Optional[Reply]: ...
    def forget(self, msg_ids: Sequence[str]) -> None:
        """Drops stored replies and outputs; a reply still to come is then discarded."""
    def outputs(self, msg_id: str) -> list[Tuple[str, dict[str, Any]]]:
        """IOPub messages of msg_id, in arrival order, without ``status``. A message with
        buffers (``data_message``) has them as ``content["buffers"]`` (memoryviews)."""
    def wait_outputs(self, msg_ids: Sequence[str], timeout: Optional[float] = None) -> bool:
        """Until each id's IOPub ``status: idle`` came, or its reply shows no engine ran it
        (synthetic replies and scheduler-made errors, whose metadata has no ``started``)."""
    def query(
        self, msg_type: str, content: _Buffer, timeout: Optional[float] = None
    ) -> Tuple[dict[str, Any], list[bytes]]:
        """A Hub request; returns (content, buffers) whatever the status. TimeoutError after
        ``timeout``; ConnectionError when the controller is gone (except for
        ``shutdown_request``, answered ``{"status": "ok"}`` if the controller's shutdown
        notification overtakes its reply)."""
    def close(self) -> None:
        """Idempotent; outstanding requests end with synthetic ConnectionError replies."""
