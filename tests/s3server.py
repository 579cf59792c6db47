"""A real S3-protocol server on loopback for the Zarr tests, started and stopped by a fixture.

moto's server mode (``ThreadedMotoServer`` on 127.0.0.1 and a free port), read and written
through s3fs. Its endpoint and credentials reach the driver through ``os.environ`` only, as a
user's would; a test module puts them in the Spark workers' environment too
(``sc.environment``, see :func:`environment`). Import the fixture into a test module:
``from s3server import s3_server``
(the fixture is named ``s3_env``; one server per module).
"""

from __future__ import annotations

import contextlib
import logging
import os

import pytest

#: The bucket the fixture creates.
BUCKET = "blockmatrix-test"


@pytest.fixture(scope="module", name="s3_env")
def s3_server(tmp_path_factory):
    """A moto S3 server on loopback, its endpoint and credentials in the environment.

    Yields the environment variables it set (for a subprocess), or None when the test extra's
    s3fs or moto is not installed (the S3 cases then skip).
    """
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    empty = tmp_path_factory.mktemp("aws")
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           # The user's own AWS files must not redirect the test.
           "AWS_CONFIG_FILE": str(empty / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials")}
    with environment(os.environ, env):
        s3fs.S3FileSystem.clear_instance_cache()
        # moto's backend is one per process: a module before this one may have made it.
        with contextlib.suppress(FileExistsError):
            s3fs.S3FileSystem().mkdir(BUCKET)
        try:
            yield env
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@contextlib.contextmanager
def environment(mapping, values: dict):
    """``mapping`` (``os.environ``, ``sc.environment``) with ``values`` set, then restored."""
    saved = {k: mapping.get(k) for k in values}
    mapping.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                mapping.pop(k, None)
            else:
                mapping[k] = v
