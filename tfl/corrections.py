"""The decisions of a review (`RUN/review.csv`: path, decision, label): the file's format, written whole and atomically
after each decision, and what `tfl finetune --corrections` does with it (relabel, exclude, add labelled photos)."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from tfl.errors import TflError

REVIEW_FILE = "review.csv"
COLUMNS = ("path", "decision", "label")
DECISIONS = ("keep", "relabel", "exclude", "label")  # keep: as labelled; label: a photo that had none


@dataclass
class Decision:
    path: str  # absolute
    decision: str
    label: str = ""  # the class, for relabel and label

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise ValueError(f"decision '{self.decision}' is none of {', '.join(DECISIONS)}")
        if self.decision in ("relabel", "label") and not self.label:
            raise ValueError(f"a '{self.decision}' decision needs a label")


def write_decisions(path: Path, decisions: list[Decision]) -> None:
    """The whole file, in the order decided, replacing the old one at once (a kill at any moment leaves the old
    file or the new, never half of one)."""
    from tfl.fileio import atomic_write_csv

    atomic_write_csv(path, COLUMNS, ((d.path, d.decision, d.label if d.decision in ("relabel", "label") else "")
                                     for d in decisions), lineterminator="\n")


def read_decisions(path: str | Path, option: str = "--corrections") -> list[Decision]:
    """The decisions of a review file, one per photo (a later row for a photo replaces an earlier one); relative
    paths are read from the file's folder. A file that is not one is a clear error."""
    path = Path(path).expanduser()
    advice = (f"Pass the review.csv that `tfl review` writes in a run's folder (columns {', '.join(COLUMNS)}; "
              f"decisions {', '.join(DECISIONS)}).")
    if not path.is_file():
        raise TflError(f"{option} '{path}' is not a file. {advice}")
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as error:
        raise TflError(f"{option} '{path}' is not a CSV file of decisions ({error}). {advice}") from None
    if not rows or tuple(cell.strip().lower() for cell in rows[0]) != COLUMNS:
        raise TflError(f"{option} '{path}' does not start with the header {','.join(COLUMNS)}. {advice}")
    decisions: dict[str, Decision] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            if len(row) != len(COLUMNS):
                raise ValueError(f"it has {len(row)} cells, not {len(COLUMNS)}")
            file, decision, label = (cell.strip() for cell in row)
            absolute = os.path.abspath(path.parent / os.path.expanduser(file))
            decisions[absolute] = Decision(absolute, decision.lower(), label)
        except ValueError as error:
            raise TflError(f"{option} '{path}', line {number}: {error}. {advice}") from None
    return list(decisions.values())


@dataclass
class Corrections:
    """A review's decisions as the data reader applies them, after the split: photos left out, labels replaced,
    photos added (to the training photos only), so that every photo stays on its side and figures before and after
    compare."""

    file: str
    excluded: frozenset = frozenset()
    relabelled: dict = field(default_factory=dict)  # absolute path -> class name
    labelled: list = field(default_factory=list)  # (absolute path, class name)
    applied: dict = field(default_factory=lambda: {"relabelled": 0, "excluded": 0, "labelled": 0})

    @classmethod
    def read(cls, path: str | Path | None) -> Corrections | None:
        if path is None:
            return None
        decisions = read_decisions(path)
        return cls(str(path), frozenset(d.path for d in decisions if d.decision == "exclude"),
                   {d.path: d.label for d in decisions if d.decision == "relabel"},
                   [(d.path, d.label) for d in decisions if d.decision == "label"])

    def check_classes(self, class_names: list[str], multilabel: bool = False) -> None:
        """Every label a decision names is a class of the data; relabelling is for photos of one label."""
        named = sorted({*self.relabelled.values(), *(label for _, label in self.labelled)} - set(class_names))
        if named:
            raise TflError(f"--corrections '{self.file}' names label(s) {', '.join(map(repr, named))}, which the data "
                           f"has no class for (its classes: {', '.join(class_names)}). Review against a run of "
                           "this data, or edit those rows.")
        if multilabel and (self.relabelled or self.labelled):
            raise TflError(f"--corrections '{self.file}' relabels or labels photos, which tfl does for photos of one "
                           "label; this data gives several per photo. Edit the label file itself, or keep only "
                           "exclude rows.")

    def relabel(self, path: str, label, class_names: list[str]):
        """The label of a photo, as corrected (class indices, as the reader holds them)."""
        name = self.relabelled.get(os.path.abspath(path))
        if name is None:
            return label
        self.applied["relabelled"] += name != class_names[label]
        return class_names.index(name)

    def report(self, matched: set[str]) -> dict:
        """What was applied, for data_report.json; rows that matched no photo of the data are counted and told."""
        unmatched = sorted((set(self.relabelled) | self.excluded) - matched)
        return {"file": self.file, **self.applied, "unmatched": len(unmatched), "unmatched_examples": unmatched[:5]}
