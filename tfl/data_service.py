"""tf.data service: training's input pipeline (decode, resize, augment) run by a dispatcher and CPU workers.

`tfl data-dispatcher` and `tfl data-worker` start TensorFlow's own servers (`tf.data.experimental.service`); a run
given `--data-service grpc://HOST:PORT` sends its training pipeline there and reads ready batches back. Every
element is produced once per pass (dynamic sharding: the dispatcher hands the workers the files in pieces).

A stage reads one endless stream, one job for the whole stage, with the epochs counted in steps: the service
rebuilds a pipeline for each job from its saved graph, random state included, so a job per epoch would give every
epoch the same augmentations. The workers read the photos by the paths the trainer has: on other machines, the
data must be at the same path (a shared or copied folder).
"""

from __future__ import annotations

import re
import socket
from typing import Callable

from tfl.errors import TflError

ADDRESS = re.compile(r"^grpc://(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")
CONNECT_SECONDS = 5.0


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of `grpc://HOST:PORT`, or a TflError saying what the address should look like."""
    match = ADDRESS.match(address.strip()) if isinstance(address, str) else None
    if match is None or not 0 < int(match["port"]) < 65536:
        raise TflError(f"--data-service takes the dispatcher's address as grpc://HOST:PORT (for example "
                       f"grpc://localhost:5050, as `tfl data-dispatcher` prints it), got {address!r}.")
    return match["host"].strip("[]"), int(match["port"])


def check_dispatcher(address: str, otherwise: str = "or leave --data-service out to read the photos here") -> None:
    """A TflError, before any work, when nothing answers at the dispatcher's address (the service itself would wait
    for it without end); `otherwise` says the other way out."""
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise TflError(f"No tf.data service dispatcher answers at {address} ({exc.strerror or exc}). Start one "
                       f"there with `tfl data-dispatcher --port {port}` and at least one `tfl data-worker "
                       f"--dispatcher {address}`, {otherwise}.") from None


def served(dataset, address: str):
    """`dataset` produced by the service's workers (each element once per pass), read back here."""
    import tensorflow as tf

    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=address))


def start_dispatcher(port: int = 0):
    """A dispatcher in this process (0: a free port); its address is `.target`."""
    import tensorflow as tf

    return tf.data.experimental.service.DispatchServer(tf.data.experimental.service.DispatcherConfig(port=port))


def start_worker(dispatcher: str, port: int = 0, host: str | None = None):
    """A worker in this process, registered with the dispatcher at `dispatcher` (grpc://HOST:PORT), telling the
    trainers to reach it at `host` (default: localhost when the dispatcher is on this machine, else this machine's
    name)."""
    import tensorflow as tf

    dispatcher_host, dispatcher_port = parse_address(dispatcher)
    local = dispatcher_host in ("localhost", "127.0.0.1", "::1")
    host = host or ("localhost" if local else socket.getfqdn())
    return tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
        dispatcher_address=f"{dispatcher_host}:{dispatcher_port}", worker_address=f"{host}:%port%", port=port))


def serve_forever(server, says: str, echo: Callable[[str], None]) -> None:
    """Block on `server` until Ctrl-C."""
    echo(says)
    try:
        server.join()
    except KeyboardInterrupt:
        echo("stopped")
