"""Type stubs for the native module ``ipp_rs._ipp_rs``."""

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Tuple, Union, final

from typing_extensions import Self

__all__ = ["__version__", "init_logging", "Controller", "Engine", "OutputSink"]

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
    Tuple[str, Sequence[bytes]],  # ("ok", buffers)
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
