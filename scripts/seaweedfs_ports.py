"""Print `weed mini` flags that put each server it runs besides S3 on a free port of its own.

`weed mini` otherwise listens on fixed defaults (master 9333, filer 8888, volume 9340, admin 23646, each
with a gRPC port 10000 above) and, when one is taken, silently moves to the next port: two instances on one
machine (`make demo` beside `make cluster`, or the tests' servers beside the cluster's) then cross-talk, and
a moved port lands on one another program was told to use (CI: the cluster's Spark master UI port). The
ports here come from the kernel (bind to port 0), so they lie in its ephemeral range, which the tests'
chosen ports (tests/helpers.free_port) stay below. WebDAV, Iceberg and Lance are not used: turned off.
"""

from __future__ import annotations

import socket
import sys
from contextlib import ExitStack

#: The servers of `weed mini` with a port of their own (http and gRPC), S3's gRPC port besides.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "s3.port.grpc",
)
OFF_FLAGS = ("-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0")


def weed_port_flags() -> list[str]:
    """One distinct free port per server: the sockets stay bound until all are chosen."""
    with ExitStack() as stack:
        ports = []
        for _ in PORT_FLAGS:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return [f"-{flag}={port}" for flag, port in zip(PORT_FLAGS, ports, strict=True)] + list(OFF_FLAGS)


if __name__ == "__main__":
    sys.stdout.write(" ".join(weed_port_flags()) + "\n")
