"""Client of the pidmap node agent, in the standard library only.

pidmap answers "which container and which pod is PID N in?" on a Unix
socket. :class:`Client` asks it over HTTP/1.1 + JSON, one method per
endpoint; :class:`Cache` keeps a local copy of its map, fed by
``/v1/watch``, for code that looks pids up per event (a cached lookup is a
``dict`` read in the calling thread).

    >>> from pidmap import Cache, Client
    >>> Client().process(1)["state"]            # doctest: +SKIP
    'running'
    >>> cache = Cache(); cache.wait_synced(10)  # doctest: +SKIP
    True
    >>> cache.lookup(1)["comm"]                 # doctest: +SKIP
    'systemd'
"""

# The gRPC stubs generated from proto/ are the package `pidmap.v1`: let
# `from pidmap.v1 import pidmap_pb2` find them on sys.path beside this one.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from .cache import Cache  # noqa: E402
from .client import (  # noqa: E402
    DEFAULT_SOCKET,
    SOCKET_ENV,
    Client,
    PidmapError,
    Record,
    Watch,
    default_socket,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "Cache",
    "Client",
    "PidmapError",
    "Record",
    "Watch",
    "default_socket",
]
