"""Per-epoch checkpoints of a run in training, and the callback that keeps them: what `--resume` continues from.

Keras' BackupAndRestore saves the weights (with the optimizer) and the epoch of one `fit`. A tfl run is several
fits (stages, one of them on cached features through a head-only model) with a best epoch tracked across them,
so this keeps the same things for the whole run, plus the stage, the early-stopping counters and the history, and
writes them so that a kill at any moment leaves the last complete epoch: files first, then `state.json`, which
names them, renamed into place.

What the folder holds (`<run>.partial/checkpoint/`):
- `stage<K>.npz`: the whole classifier's weights when stage K started (everything that stage does not train).
- `epoch<E>.npz`: the weights of the model that stage trains (the head alone on cached features, else the
  classifier) after epoch E; kept for the latest epoch, the stage's best and the run's best.
- `optimizer<E>.npz`: the optimizer's variables after the latest epoch E.
- `state.json`: a `TrainingState`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tfl.fileio import atomic_path, atomic_write_text
from tfl.runs import CHECKPOINT_STATE


@dataclass
class TrainingState:
    stage: int = 0  # index into the plan's stages that have epochs
    stage_epochs: int = 0  # epochs finished in that stage
    stopped: bool = False  # the stage stopped early (patience ran out)
    rows: list[dict] = field(default_factory=list)  # history.csv rows of every finished epoch
    best: dict | None = None  # the run's best epoch so far: {"epoch", "stage", "value"}
    stage_best: dict | None = None  # the stage's best epoch: {"epoch", "value", "loss"}
    stage_min_loss: float | None = None  # the stage's lowest validation loss
    wait: int = 0  # epochs since the stage last made progress (a better accuracy or a lower loss)

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

    def stage_finished(self, epochs: int) -> bool:
        return self.stopped or self.stage_epochs >= epochs


def npz_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"w{i}"] for i in range(len(archive.files))]


class Checkpoint:
    def __init__(self, folder: Path):
        self.folder = folder

    def load_state(self) -> TrainingState | None:
        path = self.folder / CHECKPOINT_STATE
        return TrainingState(**json.loads(path.read_text())) if path.is_file() else None

    def _write_arrays(self, name: str, arrays: list) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / name, force=True) as tmp:
            np.savez(tmp, **{f"w{i}": np.asarray(a) for i, a in enumerate(arrays)})

    def _write_state(self, state: TrainingState) -> None:
        atomic_write_text(self.folder / CHECKPOINT_STATE, json.dumps(dataclasses.asdict(state)) + "\n")
        keep = {f"stage{k}.npz" for k in range(state.stage + 1)} | {CHECKPOINT_STATE}
        keep |= {f"epoch{e['epoch']}.npz" for e in (state.best, state.stage_best) if e}
        if state.rows:
            keep |= {f"epoch{state.epochs_done}.npz", f"optimizer{state.epochs_done}.npz"}
        for path in self.folder.iterdir():
            if path.name not in keep and not path.name.startswith("."):
                path.unlink()

    def has_stage(self, stage: int) -> bool:
        return (self.folder / f"stage{stage}.npz").is_file()

    def start_stage(self, state: TrainingState, stage: int, classifier: keras.Model) -> None:
        self._write_arrays(f"stage{stage}.npz", classifier.get_weights())
        state.stage, state.stage_epochs, state.stopped, state.stage_best, state.wait = stage, 0, False, None, 0
        state.stage_min_loss = None
        self._write_state(state)

    def end_epoch(self, state: TrainingState, trained: keras.Model) -> None:
        epoch = state.epochs_done
        self._write_arrays(f"epoch{epoch}.npz", trained.get_weights())
        self._write_arrays(f"optimizer{epoch}.npz", [keras.ops.convert_to_numpy(v) for v in trained.optimizer.variables])
        self._write_state(state)

    def restore_stage_start(self, stage: int, classifier: keras.Model) -> None:
        classifier.set_weights(npz_weights(self.folder / f"stage{stage}.npz"))

    def restore_epoch(self, epoch: int, trained: keras.Model) -> None:
        trained.set_weights(npz_weights(self.folder / f"epoch{epoch}.npz"))

    def restore_latest(self, state: TrainingState, trained: keras.Model) -> None:
        """The weights and optimizer state (moments, step count, so the learning-rate schedule too) after the last
        finished epoch, into `trained`, which must be compiled."""
        self.restore_epoch(state.epochs_done, trained)
        trained.optimizer.build(trained.trainable_variables)
        for variable, value in zip(trained.optimizer.variables,
                                   npz_weights(self.folder / f"optimizer{state.epochs_done}.npz")):
            variable.assign(value)


LOSS_PROGRESS = 0.01  # a validation loss this share below the stage's lowest counts as progress (Keras' min_delta)


def beats(accuracy: float, loss: float, best: dict | None) -> bool:
    """Whether an epoch beats the `best` so far ({"value": accuracy, "loss": loss}): higher validation accuracy, the
    lower loss breaking ties."""
    return best is None or (accuracy, -loss) > (best["value"], -best["loss"])


class StageTracker(keras.callbacks.Callback):
    """Early stopping within a stage, the best epoch within the stage and across the run, the history rows, and a
    checkpoint after every epoch.

    The best epoch has the highest validation accuracy, or mAP (the lower loss breaks ties). A stage stops after `patience`
    epochs with neither a better accuracy nor a loss 1% lower than its lowest: on a few hundred validation images
    accuracy moves in steps of a fraction of a point and stalls on noise while the loss still improves, but a loss
    creeping down by thousandths at the end of a cosine schedule is no reason to go on."""

    def __init__(self, checkpoint: Checkpoint, state: TrainingState, stage_name: str, patience: int,
                 score: str = "accuracy"):
        super().__init__()
        self.checkpoint, self.state, self.stage_name, self.patience = checkpoint, state, stage_name, patience
        self.score = score  # the metric the best epoch is chosen on: accuracy, or mAP for several labels per photo

    def on_epoch_end(self, epoch, logs=None):
        logs, state = logs or {}, self.state
        value, loss = float(logs.get("val_" + self.score, 0.0)), float(logs.get("val_loss", 0.0))
        state.stage_epochs += 1
        row = {"epoch": epoch + 1, "stage": self.stage_name, "stage_epoch": state.stage_epochs,
               "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        row |= {key: round(float(logs[key]), 5) for key in ("loss", self.score, "val_loss", "val_" + self.score)
                if key in logs}
        state.rows.append(row)
        progress = state.stage_min_loss is None or loss < state.stage_min_loss * (1 - LOSS_PROGRESS)
        state.stage_min_loss = loss if progress else state.stage_min_loss
        previous = state.stage_best
        if beats(value, loss, previous):  # the best epoch; progress only if its score is higher (or its loss, above)
            state.stage_best = {"epoch": epoch + 1, "value": value, "loss": loss}
            progress = progress or previous is None or value > previous["value"]
        state.wait = 0 if progress else state.wait + 1
        if beats(value, loss, state.best):
            state.best = {"epoch": epoch + 1, "stage": state.stage, "value": value, "loss": loss}
        if state.wait >= self.patience:
            state.stopped = True
            self.model.stop_training = True
        self.checkpoint.end_epoch(state, self.model)
