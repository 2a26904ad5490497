"""--distribute: two real workers on 127.0.0.1 train one run (TensorFlow and JAX), two logical devices in one
process (mirrored), and the errors a user gets for a cluster that is not described or falls apart."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import tfl
from tests.conftest import require_mobilenet_weights, write_class_folders
from tfl.distribute import Cluster, connect, read_tf_config
from tfl.errors import TflError

SETTINGS = {"arch": "mobilenetv2", "alpha": "0.35", "image-size": "32", "batch-size": "4", "epochs": "6,1",
            "unfreeze-blocks": "2", "seed": "3"}
WORKER_TIMEOUT = 420  # seconds for both workers together; they are killed when it passes


def cli_args(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in (f"--{key}", value)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Three colour classes (24 training, 6 validation photos), and what the single-process run reached with each
    plan of the tests: its best head epoch ("6,0") and its kept model ("6,1")."""
    weights = str(require_mobilenet_weights())
    root = tmp_path_factory.mktemp("distribute")
    data = write_class_folders(root / "data", per_class=10)
    single = tfl.finetune(data, weights=weights, output=root / "runs", name="single", echo=lambda s: None, verbose=0,
                          distribute="none", arch="mobilenetv2", alpha=0.35, image_size=32, batch_size=4,
                          epochs=(6, 1), unfreeze_blocks=2, seed=3)
    rows = (single.path / "history.csv").read_text().splitlines()[1:]
    head_best = max(float(row.split(",")[6]) for row in rows if row.split(",")[1] == "head")
    return data, weights, {"6,0": head_best, "6,1": single.metrics["accuracy"]}


# Each engine's pixel stage is tested once per backend (TensorFlow with two workers, JAX on two devices); the
# other test of that backend trains the head stage alone, to keep the suite short.
EPOCHS = {("tensorflow", "multiworker"): "6,1", ("jax", "multiworker"): "6,0",
          ("tensorflow", "mirrored"): "6,0", ("jax", "mirrored"): "6,1"}


def run_workers(backend: str, data, weights: str, tmp_path) -> list[str]:
    """Start two `tfl finetune --distribute multiworker` processes on free local ports; their outputs."""
    ports = [free_port(), free_port()]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    procs, logs = [], []
    for index in range(2):
        env = dict(os.environ, TMPDIR=str(scratch), TF_CONFIG=json.dumps(
            {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}),
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}", KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(index), OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="1")  # one core each, as two machines would have their own
        env.pop("XLA_FLAGS", None)
        log = open(tmp_path / f"worker{index}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tfl.cli", "finetune", "--data", str(data), "--weights", weights,
             *cli_args(dict(SETTINGS, epochs=EPOCHS[backend, "multiworker"])), "--backend", backend,
             "--distribute", "multiworker", "--output",
             str(tmp_path / "runs"), "--name", "together"], stdout=log, stderr=subprocess.STDOUT, env=env))
    deadline = time.time() + WORKER_TIMEOUT
    try:
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(10)  # let the other one report how it saw the failure, then stop it
                break
            time.sleep(1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert not list(scratch.iterdir()), "a worker left files behind"
    return outputs


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.extended)])
def test_two_workers_train_one_run_together(colours, backend, tmp_path):
    data, weights, single = colours
    single_accuracy = single[EPOCHS[backend, "multiworker"]]
    chief, worker = run_workers(backend, data, weights, tmp_path)
    engine = "MultiWorkerMirroredStrategy" if backend == "tensorflow" else "DataParallel"
    assert engine in chief and "2 workers x 1 device(s) = 2 replicas, this is worker 0 (chief); global batch 8" in chief
    assert "this is worker 1;" in worker and "Worker 1 of 2 done; the chief (worker 0) wrote the run." in worker
    assert "Feature cache: 12 train" in chief and "Feature cache: 12 train" in worker, "each its own half"

    runs = tmp_path / "runs"
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == ["together"], "only the chief writes"
    run = tfl.open_run(runs / "together")
    assert {"model.keras", "metrics.json", "history.csv", "splits.json", "config.yaml"} <= {
        p.name for p in run.path.iterdir()}
    history = (run.path / "history.csv").read_text().splitlines()
    stages = {row.split(",")[1] for row in history[1:]}
    assert stages == ({"head", "top_blocks"} if EPOCHS[backend, "multiworker"] == "6,1" else {"head"})
    accuracy = run.metrics["accuracy"]
    assert abs(accuracy - single_accuracy) <= 2 / 6 + 1e-6, (accuracy, single_accuracy)  # 6 validation photos
    assert run.evaluate()["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    if backend == "tensorflow":  # a JAX-trained run exports under TensorFlow: tests/test_backends.py
        assert run.export(format="saved_model").is_dir()


MIRRORED_SCRIPT = """
import json, os, sys
backend, data, weights, output, epochs = sys.argv[1:6]
import tfl
from tfl.backend import use_backend
use_backend(backend)
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
lines = []
run = tfl.finetune(data, backend=backend, weights=weights, output=output, name="mirrored", distribute="mirrored",
                   echo=lines.append, verbose=0, arch="mobilenetv2", alpha=0.35, image_size=32, batch_size=4,
                   epochs=[int(e) for e in epochs.split(",")], unfreeze_blocks=2, seed=3)
print(json.dumps({"lines": lines, "accuracy": run.metrics["accuracy"], "path": str(run.path)}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("backend", [pytest.param("tensorflow", marks=pytest.mark.extended), "jax"])
def test_mirrored_trains_on_two_logical_devices(colours, backend, tmp_path):
    data, weights, single = colours
    single_accuracy = single[EPOCHS[backend, "mirrored"]]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2") if backend == "jax" else None
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED_SCRIPT), backend, str(data), weights,
                             str(tmp_path / "runs"), EPOCHS[backend, "mirrored"]],
                            capture_output=True, text=True, timeout=WORKER_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    engine = "MirroredStrategy" if backend == "tensorflow" else "DataParallel"
    assert any(f"{engine}" in line and "2 devices = 2 replicas" in line and "global batch 8 (4 per replica)" in line
               and "learning rates x 1.41" in line for line in report["lines"]), report["lines"]
    assert abs(report["accuracy"] - single_accuracy) <= 2 / 6 + 1e-6
    fine_tuned = EPOCHS[backend, "mirrored"].endswith(",1")  # JAX's fine-tuning stage is tested here
    assert any("── Stage 2/2" in line for line in report["lines"]) == fine_tuned, report["lines"]
    assert tfl.open_run(report["path"]).evaluate()["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)


def test_multiworker_without_a_cluster_description_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TflError, match="needs the TF_CONFIG environment variable.*index 1 on the second"):
        read_tf_config()
    for bad in ("not json", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
                '{"task": {"type": "worker", "index": 0}}'):
        monkeypatch.setenv("TF_CONFIG", bad)
        with pytest.raises(TflError, match="TF_CONFIG is not a usable cluster description"):
            read_tf_config()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    assert read_tf_config() == (3, 2), "the chief is worker 0, the others follow"
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    from tfl.distribute import jax_cluster

    with pytest.raises(TflError, match="KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        jax_cluster("multiworker")


def test_one_device_and_auto_mean_plain_training():
    assert connect("auto", "tensorflow").distributed is False  # no GPU here
    with pytest.warns(UserWarning, match="one device"):
        cluster = connect("mirrored", "tensorflow")
    assert not cluster.distributed and cluster.is_chief
    with pytest.raises(TflError, match="Unknown --distribute 'ring'"):
        connect("ring", "tensorflow")


def test_a_worker_whose_peer_stopped_is_told_so():
    worker = Cluster("multiworker", "test", replicas=2, workers=2, worker_index=1)
    with pytest.raises(TflError, match="Worker 1 lost contact with the other workers"):
        with worker.peers_explained():
            raise RuntimeError("Collective ops is aborted by: Socket closed")
    with pytest.raises(ValueError, match="something else"), worker.peers_explained():
        raise ValueError("something else")


def test_shards_keep_every_file_once_and_the_global_batch_scales():
    from tfl.data import Split

    split = Split([f"f{i}" for i in range(11)], [i % 3 for i in range(11)])
    shards = [Cluster("multiworker", "test", 4, 2, index).shard(split) for index in range(2)]
    assert sorted(shards[0].paths + shards[1].paths) == sorted(split.paths)
    assert len(shards[0]) - len(shards[1]) in (0, 1)
    cluster = Cluster("multiworker", "test", replicas=4, workers=2)
    assert cluster.global_batch(32) == 128 and cluster.steps_per_epoch(1000, 32) == 8
    assert cluster.learning_rate_scale() == pytest.approx(2.0)


def test_the_cli_says_what_a_multiworker_run_lacks_and_writes_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tfl.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    data = write_class_folders(tmp_path / "data", per_class=3)
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--distribute", "multiworker", "--output",
                                       str(tmp_path / "runs")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "needs the TF_CONFIG environment variable" in result.output
    assert not (tmp_path / "runs").exists()
    help_text = CliRunner().invoke(main, ["finetune", "--help"]).output
    assert "--distribute [auto|none|mirrored|multiworker]" in help_text


MULTILABEL_SCRIPT = """
import json, sys
backend, data, output = sys.argv[1:4]
import tfl
from tfl.backend import use_backend
use_backend(backend)
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
lines = []
run = tfl.finetune(data, backend=backend, weights="none", output=output, name="multi", distribute="mirrored",
                   echo=lines.append, verbose=0, arch="mobilenetv2", alpha=0.35, image_size=32, batch_size=4,
                   epochs=[2, 1], unfreeze_blocks=2, seed=3)
print(json.dumps({"lines": lines, "metrics": run.metrics, "path": str(run.path)}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.extended)])
def test_several_labels_per_photo_train_on_two_devices(backend, tmp_path):
    """A multi-label run (label file, sigmoid head, mAP, thresholds) on Keras' engines, both backends."""
    from tests.test_multilabel import striped_photos

    rows = striped_photos(tmp_path / "data" / "images", per_colour=6)
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("file,labels\n" + "".join(f'{f},"{",".join(names)}"\n' for f, names in rows))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2") if backend == "jax" else None
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(MULTILABEL_SCRIPT), backend, str(labels),
                             str(tmp_path / "runs")], capture_output=True, text=True, timeout=WORKER_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert any("2 devices = 2 replicas" in line for line in report["lines"]), report["lines"]
    metrics = report["metrics"]
    assert metrics["task"] == "multilabel" and 0 <= metrics["map"] <= 1 and len(metrics["thresholds"]) == 4
    # Random weights on 24 tiny photos give nearly tied scores: the float rounding of two replicas and of one device
    # (and of AVX2 against AVX512 kernels) reorders a tie or two, which moves this mAP by up to 0.04.
    assert tfl.open_run(report["path"]).evaluate()["map"] == pytest.approx(metrics["map"], abs=0.05)
