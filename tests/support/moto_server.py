"""An S3 server for tests: moto's threaded server on 127.0.0.1, on a port the OS picks.

Example:
    >>> with moto_s3() as endpoint:          # doctest: +SKIP
    ...     boto3.client("s3", endpoint_url=endpoint)
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Run a moto server for the block; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
