"""--data-service: training's input pipeline on a tf.data service dispatcher and workers (tfl/data_service.py)."""

import contextlib
import gc
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tfl
from tests.conftest import (MOBILENET_035_WEIGHTS, TINY_SETTINGS, cli, flowers_subset, require_flowers,
                            require_mobilenet_weights, write_class_folders)
from tfl.data_service import check_dispatcher, parse_address, served, start_dispatcher, start_worker
from tfl.errors import TflError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def service(workers: int):
    """A dispatcher and `workers` workers in this process. Stopped workers first, each in a thread that may not
    finish (a worker waits for a task whose reader lingers): a stuck stop must not hang the suite."""
    gc.collect()
    dispatcher = start_dispatcher()
    started = [start_worker(dispatcher.target) for _ in range(workers)]
    try:
        yield dispatcher, started
    finally:
        gc.collect()  # the readers of finished jobs
        for server in [*started, dispatcher]:
            stopping = threading.Thread(target=server._stop, daemon=True)
            stopping.start()
            stopping.join(timeout=10)


def test_addresses_are_checked_before_any_work(tiny_folder, tmp_path):
    assert parse_address("grpc://localhost:5050") == ("localhost", 5050)
    assert parse_address("grpc://[::1]:5050") == ("::1", 5050)
    for wrong in ("localhost:5050", "grpc://host", "http://host:80", "grpc://host:99999"):
        with pytest.raises(TflError, match="grpc://HOST:PORT"):
            parse_address(wrong)
    port = free_port()  # nothing listens there
    with pytest.raises(TflError, match=f"No tf.data service dispatcher answers at grpc://127.0.0.1:{port}"):
        check_dispatcher(f"grpc://127.0.0.1:{port}")
    with pytest.raises(TflError, match="or set data_service in config.yaml"):  # what a resumed run is told
        check_dispatcher(f"grpc://127.0.0.1:{port}", "or set data_service in config.yaml")
    result = cli("finetune", "--data", "tfds:mnist", "--data-service", f"grpc://127.0.0.1:{port}", "--output",
                 tmp_path / "runs")
    assert result.exit_code == 1 and "a tensorflow-datasets set has none" in result.output
    result = cli("finetune", "--data", tiny_folder, "--data-service", f"grpc://127.0.0.1:{port}", "--output",
                 tmp_path / "runs", "--weights", "none")
    assert result.exit_code == 1 and "tfl data-dispatcher --port" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    result = cli("finetune", "--data", tiny_folder, "--data-service", "grpc://127.0.0.1:5050", "--distribute",
                 "multiworker", "--output", tmp_path / "runs")
    assert result.exit_code == 1 and "Use one of the two" in result.output


def test_every_epoch_is_augmented_afresh_on_the_service():
    """The service rebuilds a job's pipeline from its saved graph, random state included: one endless stream per
    stage keeps the augmentations changing (a job per epoch would repeat the first epoch's)."""
    import tensorflow as tf

    from tfl.augment import build_augmenter

    augment = build_augmenter("light", 0)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    with service(workers=1) as (dispatcher, (worker,)):
        stream = served(tf.data.Dataset.from_tensor_slices(images).repeat().batch(4).map(augment), dispatcher.target)
        batches = iter(stream)
        first, second = next(batches).numpy(), next(batches).numpy()
        del batches, stream
        assert not np.allclose(first, second)
        assert worker._num_tasks() == 1


@pytest.mark.integration
def test_a_run_through_two_workers_matches_one_read_here(tmp_path):
    """Real photos and weights: a head trained on pixels (no feature cache) fed by a dispatcher and two workers on 127.0.0.1 reaches the
    accuracy of the same run fed here, within the noise of 100 validation photos; every photo is used each epoch."""
    require_flowers()
    require_mobilenet_weights()
    data = flowers_subset(tmp_path / "flowers", train_per_class=40, val_per_class=20)
    settings = dict(arch="mobilenetv2", alpha=0.35, weights=str(MOBILENET_035_WEIGHTS), image_size=128,
                    batch_size=16, epochs=(6, 0), feature_cache=False, unknown=False, calibrate=False, low_pass=False,
                    output=tmp_path / "runs", echo=lambda s: None, verbose=0)
    here = tfl.finetune(data, name="here", **settings)
    lines = []
    with service(workers=2) as (dispatcher, workers):
        away = tfl.finetune(data, name="served", data_service=dispatcher.target, **settings | {"echo": lines.append})
        assert all(worker._num_tasks() > 0 for worker in workers)  # both workers made batches
    assert any("tf.data service at " + dispatcher.target in line for line in lines)
    assert len(away.history) == 6
    accuracy = lambda run: max(float(row["val_accuracy"]) for row in run.history)  # noqa: E731
    assert accuracy(here) > 0.4 and abs(accuracy(away) - accuracy(here)) <= 0.12, (accuracy(here), accuracy(away))


@pytest.mark.integration
def test_the_commands_start_a_service_a_run_trains_through(tmp_path):
    """`tfl data-dispatcher` and `tfl data-worker` in their own processes; a tiny run trains through them."""
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = [subprocess.Popen([sys.executable, "-m", "tfl.cli", "data-dispatcher", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)]
    try:
        deadline = time.time() + 60
        while True:
            try:
                check_dispatcher(f"grpc://127.0.0.1:{port}")
                break
            except TflError:
                assert time.time() < deadline and started[0].poll() is None, "the dispatcher did not start"
                time.sleep(0.5)
        started.append(subprocess.Popen([sys.executable, "-m", "tfl.cli", "data-worker", "--dispatcher",
                                         f"grpc://127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, env=env))
        data = write_class_folders(tmp_path / "data", per_class=8)
        run = tfl.finetune(data, **TINY_SETTINGS, epochs=(0, 2), output=tmp_path / "runs", name="served",
                           data_service=f"grpc://127.0.0.1:{port}", unknown=False, echo=lambda s: None, verbose=0)
        assert len(run.history) == 2 and run.config["data_service"] == f"grpc://127.0.0.1:{port}"
    finally:
        for process in started:
            process.terminate()
    outputs = [process.communicate(timeout=30)[0] for process in started]
    assert "dispatcher at grpc://" in outputs[0] and "worker of grpc://127.0.0.1" in outputs[1]
