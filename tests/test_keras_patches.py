"""tfl/keras_patches.py is needed, and works: two real TensorFlow workers on 127.0.0.1 fit a tiny model with
MultiWorkerMirroredStrategy, with Keras as it is and with tfl's patch. The first test fails once Keras fixes
keras-team/keras#20585 itself: then drop the patch."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    index, ports, patched = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] == "patched"
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": index}})
    import numpy as np, tensorflow as tf, keras
    if patched:
        from tfl.keras_patches import patch_keras_distributed_fit
        patch_keras_distributed_fit()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(16) % 2]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat().with_options(options)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    try:
        model.fit(strategy.distribute_datasets_from_function(lambda ctx: data), epochs=1, steps_per_epoch=2,
                  verbose=0)
        print("RESULT OK", flush=True)
    except Exception as exc:
        print("RESULT FAILED", type(exc).__name__, str(exc).splitlines()[0][:200], flush=True)
""")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def two_workers(mode: str) -> list[str]:
    ports = ",".join(map(str, free_ports(2)))
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), ports, mode], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env) for i in range(2)]
    results = []
    for worker in workers:
        output, _ = worker.communicate(timeout=240)
        results.append(next((line for line in output.splitlines() if line.startswith("RESULT")), "RESULT NONE"))
    return results


@pytest.mark.integration
def test_keras_still_needs_the_multi_worker_patch():
    results = two_workers("unpatched")
    assert all("FAILED" in r for r in results), (
        "keras-team/keras#20585 looks fixed in this Keras (MultiWorkerMirroredStrategy's fit works unpatched: "
        f"{results}): drop tfl/keras_patches.py and its use in tfl/distribute.py.")


@pytest.mark.integration
def test_the_patch_makes_multi_worker_fit_work():
    assert two_workers("patched") == ["RESULT OK", "RESULT OK"]
