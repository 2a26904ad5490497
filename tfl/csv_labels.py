"""Labels from a CSV or TSV file: its layout, detected or stated; its rows matched to image files; what was skipped.

Three layouts, each a column of image file names plus:
- one label column (`file,breed`);
- one column holding several labels with a separator (`file,labels` with `"desert,mountains"`);
- one 0/1 column per label (`file,desert,mountains,...`).
A column named split/set/subset whose values are train/val/test (as tfl's split folders are named) assigns rows to
splits. File names are relative to the CSV's folder, or to `images` when given; when most are not found there but
are in one subfolder (a Kaggle `train/` beside `train.csv`), that subfolder is used, and said."""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tfl.errors import TflError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif"}
PATH_NAMES = ("path", "file", "filename", "filenames", "file_name", "image", "images", "image_id", "img", "id",
              "image_path", "filepath", "name")
LABEL_NAMES = ("label", "labels", "class", "classes", "category", "categories", "target", "tags", "y")
SPLIT_NAMES = ("split", "set", "subset", "fold_name")
SEPARATORS = (",", ";", "|", " ")  # tried in this order; a space last, as Kaggle's tag files write tags
NO_SEPARATOR = "none"  # --label-separator none: each value is one label
EXAMPLES = 5  # rows named per kind of problem, on screen and in data_report.json


@dataclass
class CsvLayout:
    """How a label file is read: which column names the images, and how the labels are written."""

    path_column: str
    label_columns: list[str]  # one column, or one 0/1 column per label
    separator: str | None = None  # several labels in one column, split on this
    split_column: str | None = None
    not_split_on: str | None = None  # a separator the values hold but that was found to join one label's words

    @property
    def one_hot(self) -> bool:
        return len(self.label_columns) > 1

    def describe(self) -> str:
        if self.one_hot:
            labels = f"one 0/1 column per label ({len(self.label_columns)}: {', '.join(self.label_columns[:6])}" + (
                ", ...)" if len(self.label_columns) > 6 else ")")
        elif self.separator:
            labels = (f"labels in column '{self.label_columns[0]}', several per row separated by '{self.separator}' "
                      f"(--label-separator {NO_SEPARATOR} reads each value as one label)")
        else:
            labels = f"one label per row in column '{self.label_columns[0]}'" + (
                f" (its values hold '{self.not_split_on}', but their parts do not combine freely, so each value is "
                f"one label: --label-separator '{self.not_split_on}' splits them)" if self.not_split_on else "")
        split = f"; splits from column '{self.split_column}'" if self.split_column else ""
        return f"files in column '{self.path_column}'; {labels}{split}"


@dataclass
class LabelledFiles:
    """The rows of a label file that name an image found on disk: its path, its labels (and split)."""

    paths: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    report: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        return any(len(labels) > 1 for labels in self.labels)


def decoded(data: bytes) -> str:
    """A label file's text: UTF-16 (Excel's "Unicode Text") or UTF-8 by their byte order marks; else UTF-8, else
    Windows-1252 (Excel's CSV on Windows: 0x92 is an apostrophe, 0x85 an ellipsis), else Latin-1."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a CSV or TSV (delimiter sniffed among comma, tab and semicolon; any line ending)."""
    try:
        text = decoded(path.read_bytes())
    except OSError as exc:
        raise TflError(f"Cannot read the label file '{path}': {exc.strerror}.") from None
    sample = "\n".join(text.splitlines()[:50])
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    # newline="": the csv module finds the line ends itself, so a quoted cell may hold one (str.splitlines would also
    # break lines at characters such as U+0085)
    rows = [row for row in csv.reader(io.StringIO(text, newline=""), dialect) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise TflError(f"The label file '{path}' has {'no rows' if not rows else 'a header and no rows'}. It needs a "
                       "header line, then one row per image: its file name and its label(s).")
    header = [cell.strip() for cell in rows[0]]
    return header, [[cell.strip() for cell in row] + [""] * (len(header) - len(row)) for row in rows[1:]]


def looks_like_files(values: list[str]) -> float:
    return sum(Path(v).suffix.lower() in IMAGE_SUFFIXES for v in values) / max(len(values), 1)


def named(header: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {column.lower().replace(" ", "_"): column for column in header}
    return next((lowered[name] for name in names if name in lowered), None)


def detect_layout(header: list[str], rows: list[list[str]], path_column: str | None = None,
                  label_column: str | None = None, separator: str | None = None, source: str = "") -> CsvLayout:
    """The layout of a label file, from what was stated and what its columns hold; an error says what to state."""
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    for given, flag in ((path_column, "--path-column"), (label_column, "--label-column")):
        if given is not None and given not in columns:
            raise TflError(f"{flag} '{given}' is not a column of '{source}'; its columns are: {', '.join(header)}.")
    if path_column is None:
        by_suffix = max(header, key=lambda name: looks_like_files(columns[name]))
        path_column = by_suffix if looks_like_files(columns[by_suffix]) >= 0.5 else named(header, PATH_NAMES)
        if path_column is None:
            raise TflError(f"Cannot tell which column of '{source}' names the image files (none holds names ending in "
                           f".jpg, .png, ... nor is called path, file or image). Its columns: {', '.join(header)}. "
                           "Pass --path-column NAME.")
    split_column = named([c for c in header if c != path_column], SPLIT_NAMES)
    if split_column:
        values = columns[split_column]
        odd = [i for i, v in enumerate(values) if v.strip().lower() not in SPLIT_VALUES]
        if odd and len(odd) < len(values):  # a split column with gaps: not a reason to split at random silently
            raise TflError(f"Column '{split_column}' of '{source}' gives a split (train, val or test) on "
                           f"{len(values) - len(odd)} row(s) but not on {len(odd)}: row {odd[0] + 1} after the header "
                           f"has '{values[odd[0]]}'. Give every row train, val or test, or remove the column to have "
                           "tfl split at random.")
        split_column = None if odd else split_column
    others = [c for c in header if c not in (path_column, split_column)]
    if label_column is None:
        binary = [c for c in others if columns[c] and set(columns[c]) <= {"0", "1", "0.0", "1.0", ""}]
        # one 0/1 column per label, unless one is named as the label: `file,label,hard` is a 0/1 label and a flag
        if len(binary) >= 2 and len(binary) == len(others) and named(others, LABEL_NAMES) is None:
            return CsvLayout(path_column, binary, split_column=split_column)
        label_column = others[0] if len(others) == 1 else named(others, LABEL_NAMES)
        if label_column is None:
            raise TflError(f"Cannot tell which column of '{source}' holds the labels: besides the files ('{path_column}') "
                           f"it has {', '.join(others) or 'no column'}. Pass --label-column NAME (one label, or "
                           "several with --label-separator), or give one 0/1 column per label.")
    if separator is not None:
        return CsvLayout(path_column, [label_column], None if separator == NO_SEPARATOR else separator, split_column)
    values = {v.strip() for v in columns[label_column] if v.strip()}
    held = [s for s in SEPARATORS if any(s in v for v in values)]
    chosen = next((s for s in held if separates(values, s)), None)
    return CsvLayout(path_column, [label_column], chosen, split_column,
                     not_split_on=None if chosen else next(iter(held), None))


def separates(values: set[str], separator: str) -> bool:
    """Whether `separator` separates labels in `values` rather than joining one label's words. The parts of a real
    separator combine: some part comes in two or more combinations (alone counts as one); parts that only ever come
    together ('few varrao, hive beetles') are one label. A space also joins the words of names, which share words
    too ('American Curl', 'British Shorthair', 'American Shorthair'), so for a space most combinations must lie on
    cycles of parts and combinations, as freely combined tags do ('black jeans', 'black shirt', 'blue shirt',
    'blue jeans': each part meets the others again) and a list of names does not."""
    combinations = {frozenset(p.strip() for p in value.split(separator) if p.strip()) for value in values}
    if separator != " ":
        seen = Counter(part for combination in combinations for part in combination)
        return any(count >= 2 for count in seen.values())
    several = [c for c in combinations if len(c) > 1]
    return bool(several) and len(on_cycles(several)) >= len(several) / 2


def on_cycles(combinations: list[frozenset]) -> set[frozenset]:
    """The combinations in the 2-core of the graph that joins each combination to its parts: those left when parts
    and combinations with fewer than two links are taken away, again and again."""
    links: dict = defaultdict(set)
    for combination in combinations:
        for part in combination:
            links[("combination", combination)].add(("part", part))
            links[("part", part)].add(("combination", combination))
    loose = [node for node, linked in links.items() if len(linked) < 2]
    while loose:
        node = loose.pop()
        for other in links.pop(node, ()):
            if other in links:
                links[other].discard(node)
                if len(links[other]) == 1:
                    loose.append(other)
    return {node[1] for node in links if node[0] == "combination"}


SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}


def labels_of(row: dict[str, str], layout: CsvLayout) -> list[str]:
    if layout.one_hot:
        return [c for c in layout.label_columns if row[c] in ("1", "1.0")]
    value = row[layout.label_columns[0]]
    parts = value.split(layout.separator) if layout.separator else [value]
    return sorted({part.strip() for part in parts if part.strip()})


class FileFinder:
    """Finds a row's file under a folder: as named, else under another image extension when exactly one such file
    exists (a `.png` or `.jpeg` where the CSV says `.jpg`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_stem: dict[str, list[str]] | None = None

    def find(self, name: str) -> tuple[str | None, bool]:
        """(path, found under another extension), or (None, False). A Windows path ('img\\x.jpg', as Windows tools
        write them) is read with its backslashes as folder separators where no file has the name as it is."""
        if "\\" in name and os.sep == "/" and not (self.folder / name).is_file():
            name = name.replace("\\", "/")
        path = Path(name) if os.path.isabs(name) else self.folder / name
        if path.is_file():
            return str(path), False
        stems = self.stems(path.parent)
        candidates = stems.get(path.stem.lower(), []) if path.suffix.lower() in IMAGE_SUFFIXES else []
        return (candidates[0], True) if len(candidates) == 1 else (None, False)

    def stems(self, folder: Path) -> dict[str, list[str]]:
        if self.by_stem is None:
            self.by_stem = {}
        key = str(folder)
        if key not in self.by_stem:
            found = defaultdict(list)
            if folder.is_dir():
                for entry in os.scandir(folder):
                    if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                        found[Path(entry.name).stem.lower()].append(entry.path)
            self.by_stem[key] = dict(found)
        return self.by_stem[key]


def images_folder(csv_path: Path, names: list[str], images: str | Path | None) -> tuple[Path, str | None]:
    """Where the file names are relative to, and a note when it was found rather than given."""
    if images is not None:
        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise TflError(f"--images '{folder}' is not a folder. Pass the folder the label file's names are relative to.")
        return folder, None
    base = csv_path.parent
    sample = names[::max(1, len(names) // 200)]  # spread over the file: real label files list photos not there

    def found(folder: Path) -> int:
        finder = FileFinder(folder)
        return sum(finder.find(n)[0] is not None for n in sample)

    here = found(base)
    if here >= len(sample) / 2:
        return base, None
    subfolders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    best = max(subfolders, key=found, default=None)
    if best is not None and found(best) > here:
        return best, (f"the files it names are not beside '{csv_path.name}' but in '{best.name}/', so they are read "
                      "from there; --images DIR says where to look")
    return base, None


def read_label_file(csv_path: str | Path, images: str | Path | None = None, path_column: str | None = None,
                    label_column: str | None = None, separator: str | None = None) -> LabelledFiles:
    """The rows of a label file whose image exists, with their labels; the rest counted in `report` by reason."""
    csv_path = Path(csv_path).expanduser()
    header, rows = read_table(csv_path)
    layout = detect_layout(header, rows, path_column, label_column, separator, str(csv_path))
    records = [dict(zip(header, row)) for row in rows]
    folder, note = images_folder(csv_path, [r[layout.path_column] for r in records], images)
    finder = FileFinder(folder)
    result = LabelledFiles(report={"label_file": str(csv_path), "csv_layout": layout.describe(),
                                   "images_folder": str(folder), "rows": len(records)})
    if note:
        result.report["note"] = note
    problems: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, int] = {}
    for number, record in enumerate(records, start=2):  # line numbers as an editor shows them
        name = record[layout.path_column]
        path, renamed = finder.find(name) if name else (None, False)
        labels = labels_of(record, layout)
        if path is None:
            problems["file not found"].append(f"line {number}: '{name}'")
            continue
        if not labels:
            problems["no label"].append(f"line {number}: '{name}'")
            continue
        if renamed:
            problems["found under another extension (kept)"].append(f"line {number}: '{name}' is '{Path(path).name}'")
        if path in seen:
            first = seen[path]
            if result.labels[first] != labels:
                problems["listed twice with other labels (both skipped)"].append(f"line {number}: '{name}'")
                result.labels[first] = []
            else:
                problems["listed twice (the first kept)"].append(f"line {number}: '{name}'")
            continue
        seen[path] = len(result.paths)
        result.paths.append(path)
        result.labels.append(labels)
        result.splits.append(SPLIT_VALUES[record[layout.split_column].strip().lower()] if layout.split_column else None)
    kept = [i for i, labels in enumerate(result.labels) if labels]
    result.paths, result.labels, result.splits = ([getattr(result, a)[i] for i in kept]
                                                  for a in ("paths", "labels", "splits"))
    result.report["problems"] = {reason: {"rows": len(lines), "examples": lines[:EXAMPLES]}
                                 for reason, lines in problems.items()}
    result.report["matched"] = len(result.paths)
    if not result.paths:
        example = next(iter(problems.values()), ["?"])[0]
        raise TflError(f"No row of '{csv_path}' names an image that exists under '{folder}' (e.g. {example}). Pass "
                       "--images DIR, the folder the file names are relative to.")
    return result


def label_counts(files: LabelledFiles) -> Counter:
    return Counter(label for labels in files.labels for label in labels)
