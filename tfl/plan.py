"""The adaptive plan (`plan: auto`): stage lengths, unfrozen blocks and learning rates chosen from the data.

The rules follow what transfers across datasets rather than what fits one (see the README's quality table):
- Linear probe first, to convergence (Kumar et al. 2022, LP-FT): on cached features an epoch costs milliseconds, so
  the head trains until validation stops improving instead of for a fixed 3 epochs.
- Then gentle fine-tuning: a learning-rate warmup, a low peak rate, and fewer unfrozen blocks the fewer images
  there are to fit them with (fastai's `fine_tune` and the Keras guide unfreeze the top; Big Transfer's
  HyperRule sizes the schedule by dataset size). The stem (the blocks at output stride 4 or less) never trains:
  its generic filters gain little from a small set, and its gradients cost most of a step.
- A step budget, not an epoch count: small sets get more epochs of few steps, large sets fewer epochs of many.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tfl.archs import ArchSpec
from tfl.config import Stage, TrainConfig

HEAD_MAX_EPOCHS = 100  # on cached features; early stopping ends it far sooner
HEAD_PATIENCE = 8  # epochs without a better validation loss or accuracy
HEAD_LEARNING_RATE = 1e-3
# Optimizer steps in the unfreezing stage. 1,500 (and up to 15 epochs) gained nothing over 1,000 on the shared sets'
# validation (weather4 and potato_leaf3 peaked by epoch 7-8 of 15, and flowers within 0.5 point) and took 1.5x the
# time of the stage (benchmarks/README.md, "Round two").
FINE_TUNE_STEPS = 1000
# At least, at most. At most 8 (not 10) on sets of a few thousand photos or fewer: see benchmarks/README.md, "Round
# three"; the recipe's own fine-tuning runs 10 epochs.
FINE_TUNE_EPOCHS = (3, 8)
WARMUP_FRACTION = 0.2  # of the fine-tuning epochs, at least one


@dataclass(frozen=True)
class SizeRule:
    """Datasets with fewer than `below` training images per class... unfreeze this share of the blocks."""

    below: float
    block_share: float
    learning_rate: float


# The fewer images per class, the fewer blocks (and the lower the rate) fine-tuning may move; never the stem.
# Measured: with 691 flower photos per class, 14 of 18 blocks at 1e-4 for 6 epochs reached 0.750, the whole
# backbone at 3e-4 for 10 epochs 0.780, and the 14 blocks above the stem at 3e-4 for 16 epochs 0.785 in 1.1x the
# time; with 219 weather photos per class, half the blocks at 1e-4 made 4 errors in 219 where the Keras guide's
# recipe made 9.
SIZE_RULES = (
    SizeRule(below=100, block_share=0.25, learning_rate=5e-5),
    SizeRule(below=500, block_share=0.5, learning_rate=1e-4),
    SizeRule(below=math.inf, block_share=1.0, learning_rate=3e-4),
)


@dataclass(frozen=True)
class DataStats:
    train_images: int
    classes: int

    @property
    def per_class(self) -> float:
        return self.train_images / max(1, self.classes)


def size_rule(stats: DataStats) -> SizeRule:
    return next(rule for rule in SIZE_RULES if stats.per_class < rule.below)


def steps_per_epoch(stats: DataStats, batch_size: int) -> int:
    return max(1, math.ceil(stats.train_images / batch_size))


def fine_tune_epochs(stats: DataStats, batch_size: int) -> int:
    low, high = FINE_TUNE_EPOCHS
    return max(low, min(high, math.ceil(FINE_TUNE_STEPS / steps_per_epoch(stats, batch_size))))


def auto_plan(config: TrainConfig, spec: ArchSpec, stats: DataStats,
              global_batch: int | None = None) -> tuple[TrainConfig, list[str]]:
    """The config with its stages chosen from `stats`, and one line per choice saying why. `global_batch`: the
    images per step over every replica, when training is distributed."""
    rule = size_rule(stats)
    blocks = min(spec.tunable_blocks, max(1, round(rule.block_share * spec.num_blocks)))
    batch = global_batch or config.batch_size
    epochs = fine_tune_epochs(stats, batch)
    warmup = max(1, round(WARMUP_FRACTION * epochs))
    stages = [
        Stage("head", HEAD_MAX_EPOCHS, HEAD_LEARNING_RATE, 0, patience=HEAD_PATIENCE),
        Stage("top_blocks", epochs, rule.learning_rate, blocks, warmup_epochs=warmup, patience=config.patience),
    ]
    where = f"{stats.train_images:,} training images in {stats.classes} classes ({stats.per_class:.0f} per class)"
    reasons = [
        f"head: trained to convergence on cached features (up to {HEAD_MAX_EPOCHS} epochs, stops after "
        f"{HEAD_PATIENCE} without progress) at {HEAD_LEARNING_RATE:.0e}",
        f"top_blocks: {where}: top {blocks} of {spec.num_blocks} blocks at {rule.learning_rate:.0e}"
        f"{' (all above the stem)' if blocks == spec.tunable_blocks else ''}, "
        f"{epochs} epochs of {steps_per_epoch(stats, batch)} steps (aiming at {FINE_TUNE_STEPS} steps, "
        f"{FINE_TUNE_EPOCHS[0]} to {FINE_TUNE_EPOCHS[1]} epochs), the first {warmup} warming up",
    ]
    return dataclasses.replace(config, stages=stages, plan="fixed"), reasons
