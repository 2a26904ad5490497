"""Reading image data: class folders, label files and tfds scanned (bad files skipped and reported), exclusions, a
review's corrections and splits, and the photos of a folder an option names; decoding and tf.data pipelines are
tfl/pipeline.py's."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tfl.corrections import Corrections
from tfl.errors import TflError, has_control_characters, warn
from tfl.scan import ScanCache, scan_cache_file, scan_files
from tfl.split import Split

IGNORED_NAMES = {"Thumbs.db", "desktop.ini", "__MACOSX"}
# Split folder names, matched in any case: Kaggle downloads, Roboflow exports and torchvision's ImageFolder sets.
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                 "test": ("test", "testing")}
SPLIT_ROLES = {"train": "training", "val": "validation", "test": "held-out test"}
# A top-level folder named like a split that tfl does not know (seg_train, train_set, Test-Images): a class it is not.
SPLIT_LIKE = re.compile(r"(?i)(^|[^a-z])(train|training|trn|val|valid|validation|dev|test|testing|tst)"
                        r"(set|data|ing)?([^a-z]|$)")


@dataclass
class ImageData:
    class_names: list[str]
    train: Split
    val: Split
    test: Split | None
    report: dict
    multilabel: bool = False  # labels are lists of class indices (several per photo)
    scanned: dict = field(default_factory=dict)  # path -> ScannedFile: hashes and measures for the data checks


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def rgb_image(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow image; 16-bit and float greys are scaled, not clipped (clipping turns them white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(pixels / 257), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(pixels * (255 if pixels.max() <= 1 else 1)), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def png_bytes_of(path: str) -> bytes:
    """A file Pillow reads but TensorFlow cannot (TIFF, 16-bit TIFF, ...), re-encoded as an RGB PNG."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        rgb_image(ImageOps.exif_transpose(image)).save(buffer, "PNG")
    return buffer.getvalue()


def convert_to_png(path: str, converted_dir: Path) -> str:
    converted_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    target = converted_dir / f"{digest}_{Path(path).stem}.png"
    target.write_bytes(png_bytes_of(path))
    return str(target)


def photos_below(folder: str | Path, option: str, advice: str = "", kind: str = "photos of none of the classes"
                 ) -> list[str]:
    """Every file below `folder` but hidden ones (whatever the user has), or an error naming `option`."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise TflError(f"{option} '{folder}' is not a folder. Pass a folder of {kind}{' ' + advice if advice else ''}.")
    files = sorted(str(p) for p in path.rglob("*")
                   if p.is_file() and not any(is_hidden(part) for part in p.relative_to(path).parts))
    if not files:
        raise TflError(f"{option} '{folder}' holds no files. Put {kind} in it"
                       f"{', or leave the option out' if advice else ''}.")
    return files


def list_class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def list_files(folder: Path, skipped: list | None = None) -> list[str]:
    """The files under `folder`, hidden ones left out; folder links are not followed (they can loop or lead out of
    the data) and, with `skipped`, each is listed there with the reason."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            if skipped is not None and not is_hidden(name) and os.path.islink(os.path.join(dirpath, name)):
                skipped.append({"path": os.path.join(dirpath, name), "reason": "a link to a folder, which tfl does "
                                "not follow (it can loop or lead out of the data): move or copy its photos in"})
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not is_hidden(f)]
    return files


def utf8_name(path: str) -> bool:
    """Whether a path is valid UTF-8 (one that is not reaches Python with surrogates, which TensorFlow, JSON files
    and terminals refuse)."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@dataclass
class Reader:
    """One reading of photos: the report it fills, where converted files go, the scan cache, the photos the user
    excluded (absolute paths), and the scan of every photo kept (for the data checks)."""

    report: dict
    converted_dir: Path | None = None
    scan_cache: ScanCache | None = None
    excluded: frozenset = frozenset()
    scanned: dict = field(default_factory=dict)
    corrections: Corrections | None = None  # a review's decisions (tfl/corrections.py)
    class_names: list[str] = field(default_factory=list)  # set once known: the corrections name classes
    corrected_paths: set = field(default_factory=set)  # the photos of the data a correction matched

    def class_folders(self, folder: Path, class_names: list[str]) -> Split:
        """`folder/<class>/**`, scanned."""
        return self.candidates([(path, label) for label, name in enumerate(class_names)
                                if (folder / name).is_dir()
                                for path in list_files(folder / name, self.report["skipped"])])

    def candidates(self, candidates: list[tuple[str, object]]) -> Split:
        """(path, label) pairs scanned in parallel: usable files become the split, the rest go to the report."""
        report = self.report
        if self.excluded:
            left_out = [os.path.abspath(path) for path, _ in candidates if os.path.abspath(path) in self.excluded]
            report["excluded"] = report.get("excluded", 0) + len(left_out)
            report.setdefault("excluded_paths", []).extend(left_out)
            candidates = [c for c in candidates if os.path.abspath(c[0]) not in self.excluded]
        named, candidates = candidates, []
        for path, label in named:
            if utf8_name(path):
                candidates.append((path, label))
            else:
                report["skipped"].append({"path": path, "reason": "its name is not valid UTF-8 (an old archive's "
                                                                  "encoding, say): rename it"})
        paths = [path for path, _ in candidates]
        scanned = self.scan_cache.scan(paths) if self.scan_cache else scan_files(paths)
        split = Split()
        report.setdefault("short_sides", []).extend(r.short_side for r in scanned if not r.problem)
        for (path, label), result in zip(candidates, scanned):
            if result.problem:
                report["skipped"].append({"path": path, "reason": result.problem})
                continue
            if result.needs_conversion:
                if self.converted_dir is None:
                    report["skipped"].append({"path": path, "reason": "format TensorFlow cannot decode"})
                    continue
                path = convert_to_png(path, self.converted_dir)
                report["converted"].append({"path": result.path, "to": path})
            split.paths.append(path)
            split.labels.append(label)
            self.scanned[path] = result
        return split

    def corrected(self, split: Split | None) -> Split | None:
        """The split with the review's exclusions left out and its labels applied (a photo of the data that the
        review labelled is relabelled). Applied after the split is made, so that each photo stays on its side."""
        fixes = self.corrections
        if fixes is None or split is None:
            return split
        labelled, kept = dict(fixes.labelled), Split()
        for path, label in zip(split.paths, split.labels):
            absolute = os.path.abspath(self.originals.get(path, path))
            if absolute in fixes.excluded:
                fixes.applied["excluded"] += 1
                self.corrected_paths.add(absolute)
                continue
            if absolute in fixes.relabelled or absolute in labelled:
                fixes.relabelled.setdefault(absolute, labelled.get(absolute))
                label = fixes.relabel(absolute, label, self.class_names)
                self.corrected_paths.add(absolute)
            kept.paths.append(path)
            kept.labels.append(label)
        return kept

    def with_labelled(self, train: Split) -> Split:
        """The training photos and the photos the review labelled that the data does not hold, scanned like the
        others; the report counts what the corrections did (so it comes after every split's `corrected`)."""
        fixes = self.corrections
        if fixes is None:
            return train
        new = [(path, self.class_names.index(label)) for path, label in fixes.labelled
               if path not in self.corrected_paths]
        if new:
            added = self.candidates(new)
            fixes.applied["labelled"] += len(added)
            self.corrected_paths.update(os.path.abspath(path) for path, _ in new)
            train = Split(train.paths + added.paths, train.labels + added.labels)
        left_out = {os.path.abspath(path) for path in self.report.get("excluded_paths", ())}  # by --exclude first
        self.report["corrections"] = fixes.report(self.corrected_paths | left_out)
        return train

    @property
    def originals(self) -> dict[str, str]:
        """Converted copies (PNG) -> the files they were converted from: decisions name the user's files."""
        return {row["to"]: row["path"] for row in self.report.get("converted", [])}


def scan_class_folders(folder: Path, class_names: list[str], report: dict, converted_dir: Path | None) -> Split:
    """Scan `folder/<class>/**` in parallel; usable files become the split, the rest go to the report."""
    return Reader(report, converted_dir).class_folders(folder, class_names)


EXCLUSION_NOTE = re.compile(r"\s+#\s.*$")  # "path  # why": a note after a path, after white space


def read_exclusions(path: str | Path | None) -> frozenset:
    """The photos a user excluded: one path per line (relative ones to the list's folder); a line starting with '#'
    is a comment, and ' # ' after a path starts a note ('#' inside a file name is part of it)."""
    if path is None:
        return frozenset()
    path = Path(path).expanduser()
    if not path.is_file():
        raise TflError(f"--exclude '{path}' is not a file. Pass a text file with one photo path per line ('tfl check "
                       "--exclusions FILE' writes one to edit).")
    from tfl.csv_labels import decoded

    data = path.read_bytes()
    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TflError(f"--exclude '{path}' is not a text file. Pass a text file with one photo path per line.")
    lines = [EXCLUSION_NOTE.sub("", line).strip() for line in decoded(data).splitlines()
             if not line.lstrip().startswith("#")]
    return frozenset(os.path.abspath(path.parent / line) for line in lines if line)


def stratified_split(split: Split, val_fraction: float, seed: int,
                     groups: list[int] | None = None) -> tuple[Split, Split]:
    """A seeded split with each class's share in validation. With `groups` (a group id per photo: copies of one
    photo share one), a group goes to one side whole, so no photo is in both; a group whose copies carry different
    labels goes to training."""
    rng = np.random.default_rng(seed)
    train, val = Split(), Split()
    labels = np.asarray(split.labels)
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(range(len(split)) if groups is None else groups):
        members[group].append(index)
    mixed, by_label = [], defaultdict(list)  # one pass over the groups: linear in the photos
    for group, indices in members.items():
        if len({int(labels[i]) for i in indices}) > 1:
            mixed.append(group)
        else:
            by_label[int(labels[indices[0]])].append(group)
    for label in np.unique(labels):
        own = by_label[int(label)]
        total = sum(len(members[g]) for g in own)
        n_val = int(round(total * val_fraction))
        if total >= 2:
            n_val = min(max(n_val, 1), total - 1)  # every class in both splits
        taken = 0
        for group in rng.permutation(np.asarray(own, dtype=int)):
            target = val if taken < n_val else train
            taken += len(members[group]) if target is val else 0
            for index in members[group]:
                target.paths.append(split.paths[index])
                target.labels.append(int(label))
    for group in mixed:
        for index in members[group]:
            train.paths.append(split.paths[index])
            train.labels.append(int(labels[index]))
    return train, val


def find_split_folders(root: Path) -> dict[str, Path]:
    """The split folders at the top of `root` ({"train": path, "val": path, "test": path}, each optional), matched
    in any case; folders that look like splits but are none of these stop with a message rather than become
    classes."""
    folders = list_class_folders(root)
    roles = {name: split for split, names in SPLIT_FOLDERS.items() for name in names}
    found: dict[str, Path] = {}
    for folder in folders:
        split = roles.get(folder.name.lower())
        if split is None:
            continue
        if split in found:
            raise TflError(f"'{root}' has two {SPLIT_ROLES[split]} folders, '{found[split].name}' and "
                           f"'{folder.name}'. Keep one of them (merge or rename the other).")
        found[split] = folder
    lookalikes = [f.name for f in folders if f not in found.values() and SPLIT_LIKE.search(f.name)]
    if found and "train" not in found:
        raise TflError(f"'{root}' has split folder(s) {', '.join(f.name + '/' for f in found.values())} but no "
                       "training folder. Add a train/ folder of class subfolders beside them (or pass --data with a "
                       "folder of class subfolders).")
    if lookalikes and (found or len(lookalikes) >= 2 or not folders[1:]):
        raise TflError(f"'{root}' holds folder(s) named like dataset splits ({', '.join(lookalikes)}), which tfl "
                       "does not recognise, so it cannot tell them from classes. Rename them train/ and val/ "
                       "(or valid/, validation/, dev/; test/ for a held-out test set), or pass --data the folder "
                       "whose subfolders are the classes.")
    if found:
        others = [f.name for f in folders if f not in found.values()]
        if others:
            warn(f"'{root}' has split folders, so its other top-level folder(s) {', '.join(others)} are ignored.")
    return found


def describe_layout(split_folders: dict[str, Path], val_split: float, seed: int) -> str:
    """What each top-level folder serves as, in words (printed before training and kept in data_report.json)."""
    parts = [f"{split_folders[s].name}/ ({SPLIT_ROLES[s]}" + (
             f", {val_split:.0%} of it held out for validation, seed {seed})" if s == "train" and "val" not in
             split_folders else ")") for s in ("train", "val", "test") if s in split_folders]
    return "split folders: " + ", ".join(parts)


def class_counts(split: Split, class_names: list[str]) -> dict[str, int]:
    """Photos per class (per label, when photos have several)."""
    counts = Counter(label for labels in split.labels for label in labels) if split.labels and isinstance(
        split.labels[0], list) else Counter(split.labels)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


def load_image_folder(data_dir: str | Path, val_split: float = 0.2, seed: int = 42,
                      converted_dir: Path | None = None, scan_cache_dir: Path | None = None,
                      excluded: frozenset = frozenset(), corrections: Corrections | None = None) -> ImageData:
    """Read `data_dir/<class>/...`, or `data_dir/{train,val[,test]}/<class>/...` when those folders exist.

    With `scan_cache_dir`, files scanned by an earlier run and unchanged since are not decoded again."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise TflError(f"Data folder '{root}' does not exist. Pass --data DIR, a folder with one subfolder of images per class.")
    if not root.is_dir():
        raise TflError(f"--data '{root}' is a file, not a folder. Pass a folder with one subfolder of images per class.")
    report: dict = {"source": str(root), "skipped": [], "converted": []}
    scan_cache = ScanCache.load(scan_cache_file(scan_cache_dir, root)) if scan_cache_dir else None
    try:
        return read_image_folder(root, val_split, seed, Reader(report, converted_dir, scan_cache, excluded,
                                                               corrections=corrections))
    finally:
        if scan_cache:
            scan_cache.save()


def read_image_folder(root: Path, val_split: float, seed: int, reader: Reader) -> ImageData:
    report = reader.report
    split_folders = find_split_folders(root)
    class_root = split_folders.get("train", root)
    class_names = [p.name for p in list_class_folders(class_root)]
    check_classes(class_names, class_root)
    reader.class_names = class_names
    if reader.corrections is not None:
        reader.corrections.check_classes(class_names)
    for extra_split in ("val", "test"):
        if extra_split in split_folders:
            extra = {p.name for p in list_class_folders(split_folders[extra_split])} - set(class_names)
            if extra:
                raise TflError(f"'{split_folders[extra_split]}' has class folder(s) {', '.join(sorted(extra))} that "
                               f"'{class_root}' lacks. Every class needs training images.")
    report["layout"] = (describe_layout(split_folders, val_split, seed) if split_folders
                        else f"stratified split, {val_split:.0%} validation, seed {seed}")
    scanned = reader.scanned
    everything = reader.class_folders(class_root, class_names)
    if "val" in split_folders:
        train = everything
        val = reader.class_folders(split_folders["val"], class_names)
    else:
        check_usable(everything, class_names, class_root, report)
        train, val = stratified_split(everything, val_split, seed, copies_of(everything, scanned, report))
        warn_about_small_classes(everything, val, class_names, val_split)
    test = None
    if "test" in split_folders:
        test = reader.class_folders(split_folders["test"], class_names)
        if not len(test):
            warn(f"'{split_folders['test']}' holds no image in class subfolders named like the training classes, so "
                 "there is no test set (unlabelled photos can be classified with 'tfl predict').")
            test = None
    val, test = reader.corrected(val), reader.corrected(test)
    train = reader.with_labelled(reader.corrected(train))  # last: it counts what every split's corrections did
    check_usable(train, class_names, class_root, report)
    warn_about_missing_val_classes(val, class_names)
    if len(val) == 0:
        raise TflError(f"The validation split of '{root}' has no usable image. Add images to it, or raise --val-split.")
    return checked(ImageData(class_names, train, val, test, report, scanned=scanned))


def copies_of(split: Split, scanned: dict, report: dict) -> list[int]:
    """A group id per photo of `split` (copies of one photo share one), for a split that keeps each group on one
    side; the report says how many photos that concerned."""
    from tfl.checks import grouped_split_groups

    groups = grouped_split_groups(split.paths, scanned)
    grouped = sum(count for count in Counter(groups).values() if count > 1)
    report["split_keeps_copies_together"] = grouped
    return groups


def checked(data: ImageData) -> ImageData:
    """The report's totals (classes, photos and labels per split, median short side) and the data checks
    (tfl/checks.py) on every photo read."""
    from tfl.checks import Photo, health_report

    report = data.report
    named = [(name, split) for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
             if split is not None]
    report["classes"] = data.class_names
    report["median_short_side"] = int(np.median(report.pop("short_sides"))) if report.get("short_sides") else None
    report["counts"] = {name: class_counts(split, data.class_names) for name, split in named}
    report["images"] = {name: len(split) for name, split in named}

    photos = [Photo(path, label, name, data.scanned[path]) for name, split in named
              for path, label in zip(split.paths, split.labels) if path in data.scanned]
    data.report["checks"] = health_report(photos, data.class_names)
    return data


def warn_about_small_classes(everything: Split, val: Split, class_names: list[str], val_split: float) -> None:
    """Say where a small class could not be split at the fraction asked for (every class keeps one of each)."""
    totals, in_val = class_counts(everything, class_names), class_counts(val, class_names)
    odd = [f"{name} ({in_val[name]} of {n})" for name, n in totals.items()  # a share of 0 or all was clamped
           if in_val[name] != int(round(n * val_split)) and int(round(n * val_split)) in (0, n)]
    if odd:
        warn(f"Some classes are too small for a {val_split:.0%} validation split, so their share differs: "
             f"{', '.join(odd)} validation images. Their validation figures rest on very few images; add photos "
             "to them for a fairer measure.")


def warn_about_missing_val_classes(val: Split, class_names: list[str]) -> None:
    missing = [name for name, n in class_counts(val, class_names).items() if n == 0]
    if missing:
        warn(f"Class(es) {', '.join(missing)} have no validation image, so their accuracy is not measured (and "
             "they are left out of macro F1). Add validation photos for them.")


def check_classes(class_names: list[str], folder: Path) -> None:
    """Two classes at least, each a name labels.txt can hold on one line (a line break would make one class two)."""
    odd = next((name for name in class_names if has_control_characters(name)), None)
    if odd is not None:
        raise TflError(f"Class {odd!r} of '{folder}' has a line break, a tab or another control character in its "
                       "name; labels.txt and every artifact keep one class name per line. Rename "
                       "it (the folder, or the label in the label file).")
    if len(class_names) < 2:
        found = f"only '{class_names[0]}'" if class_names else "none"
        raise TflError(f"'{folder}' needs at least two class subfolders (one folder of images per class); found {found}.")


def check_usable(split: Split, class_names: list[str], root: Path, report: dict) -> None:
    empty = [name for name, n in class_counts(split, class_names).items() if n == 0]
    if empty:
        problems = f" ({len(report['skipped'])} file(s) were skipped as unreadable: see the list above)" if report["skipped"] else ""
        if root.is_file():  # a label file: the label is on no training row (only on validation ones, say)
            raise TflError(f"Label(s) {', '.join(empty)} of '{root}' have no usable training photo{problems}: they "
                           "are only on validation or test rows, or their photos could not be read. Give them "
                           "training rows, or remove their rows.")
        raise TflError(f"Class folder(s) {', '.join(empty)} in '{root}' have no usable training image{problems}. "
                       "Add images to them or remove the folders.")


def load_tfds(name: str, val_split: float = 0.2, data_dir: str | None = None) -> ImageData:
    """Read a tensorflow-datasets image classification dataset ('tfds:NAME' on the command line)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
    except Exception as exc:  # tfds raises many kinds: unknown name, download failures, ...
        raise TflError(f"Could not load the tensorflow-datasets dataset '{name}': {str(exc).splitlines()[0]}. "
                       "Check the name (https://www.tensorflow.org/datasets/catalog) and your internet connection.") from None
    info = builder.info
    image_key = next((k for k, f in info.features.items() if isinstance(f, tfds.features.Image)), None)
    if image_key is None or "label" not in info.features:
        raise TflError(f"tfds dataset '{name}' is not an image classification dataset (it needs an image and a 'label' feature).")
    class_names = list(info.features["label"].names)
    available = set(info.splits.keys())
    val_name = next((s for s in ("validation", "val", "test") if s in available), None)
    if val_name:
        split_names = {"train": "train", "val": val_name}
    else:
        cut = int(round(100 * (1 - val_split)))
        split_names = {"train": f"train[:{cut}%]", "val": f"train[{cut}%:]"}
    splits = {}
    for key, split_name in split_names.items():
        source = builder.as_dataset(split=split_name, shuffle_files=False)
        source = source.map(lambda ex: (ex[image_key], ex["label"]), num_parallel_calls=tf.data.AUTOTUNE)
        labels = [int(y) for y in source.map(lambda x, y: y).as_numpy_iterator()]
        splits[key] = Split(labels=labels, source=source)
    report = {"source": f"tfds:{name}", "layout": f"tfds splits {split_names}", "skipped": [], "converted": [],
              "classes": class_names,
              "counts": {k: class_counts(s, class_names) for k, s in splits.items()}}
    return ImageData(class_names, splits["train"], splits["val"], None, report)


def load_data(data: str, val_split: float, seed: int, converted_dir: Path | None = None,
              scan_cache_dir: Path | None = None, csv: CsvOptions | None = None,
              exclude: str | Path | None = None, corrections: str | Path | None = None) -> ImageData:
    """The photos of `--data`: a tfds name, a label file, a folder of label files (train.csv, val.csv) or a folder of
    class folders."""
    if data.startswith("tfds:"):
        if corrections is not None:
            raise TflError("--corrections applies a review to photo files; a tfds dataset has none. Pass --data a "
                           "folder of class folders or a label file, or leave --corrections out.")
        return load_tfds(data.removeprefix("tfds:"), val_split)
    path = Path(data).expanduser()
    listed, fixes = read_exclusions(exclude), Corrections.read(corrections)
    if path.is_file() and path.suffix.lower() in LABEL_FILE_SUFFIXES or path.is_dir() and split_label_files(path):
        return excluding(load_label_files(path, val_split, seed, converted_dir, scan_cache_dir, csv or CsvOptions(),
                                          listed, fixes), exclude, listed)
    folders = excluding(load_image_folder(data, val_split, seed, converted_dir, scan_cache_dir, listed, fixes),
                        exclude, listed)
    if csv is not None and csv.task == "multilabel":  # asked for: independent scores, each photo with its one label
        for split in (folders.train, folders.val, folders.test):
            if split is not None:
                split.labels = [[label] for label in split.labels]
        folders.multilabel, folders.report["task"] = True, "multilabel"
    return folders


def excluding(data: ImageData, exclude: str | Path | None, listed: frozenset = frozenset()) -> ImageData:
    """The report names the user's exclusion list and how many photos it left out; lines that matched no photo are
    told (a list read against other data, or paths written for another folder, would leave out nothing)."""
    if exclude is not None:
        data.report["exclude_file"] = str(exclude)
        data.report.setdefault("excluded", 0)
        unmatched = sorted(listed - set(data.report.get("excluded_paths", ())))
        if unmatched:
            warn(f"{len(unmatched)} line(s) of {exclude} match no photo of the data, so they leave nothing out "
                 f"(the first: {unmatched[0]}). Relative paths are read from the list's folder.")
    return data


# --- label files -----------------------------------------------------------------------------------

LABEL_FILE_SUFFIXES = (".csv", ".tsv")


@dataclass
class CsvOptions:
    """What the user stated about a label file's layout (None: detected)."""

    images: str | None = None
    path_column: str | None = None
    label_column: str | None = None
    label_separator: str | None = None
    task: str = "auto"  # single, multilabel, or auto: multilabel when some photo has several labels

    @classmethod
    def of(cls, settings) -> "CsvOptions":
        """The options a TrainConfig (or anything with its fields) states."""
        return cls(settings.images, settings.path_column, settings.label_column, settings.label_separator,
                   settings.task)


def split_label_files(folder: Path) -> dict[str, Path]:
    """train.csv and val.csv (and test.csv; any split folder name, .csv or .tsv) at the top of a folder."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            for suffix in LABEL_FILE_SUFFIXES:
                if (folder / f"{name}{suffix}").is_file() and split not in found:
                    found[split] = folder / f"{name}{suffix}"
    return found if {"train", "val"} <= found.keys() else {}


def load_label_files(path: Path, val_split: float, seed: int, converted_dir: Path | None,
                     scan_cache_dir: Path | None, options: CsvOptions, excluded: frozenset = frozenset(),
                     corrections: Corrections | None = None) -> ImageData:
    """Photos named by a label file (its split column honoured), or by train.csv/val.csv[/test.csv] in a folder."""
    from tfl.csv_labels import NO_SEPARATOR, read_label_file

    sources = split_label_files(path) if path.is_dir() else {"all": path}
    images = options.images or (str(path) if path.is_dir() else None)
    separator = options.label_separator or (NO_SEPARATOR if options.task == "single" else None)  # values whole
    read = {split: read_label_file(file, images, options.path_column, options.label_column, separator)
            for split, file in sources.items()}
    several = [str(sources[s]) for s, files in read.items() if files.multilabel]
    if several and options.task == "single":
        raise TflError(f"'{several[0]}' gives several labels to some photos, but --task single was asked for. Pass "
                       "--task multilabel (or auto), or give each photo one label.")
    multilabel = bool(several) or options.task == "multilabel"
    every = sorted({label for files in read.values() for labels in files.labels for label in labels})
    check_classes(every, path)
    report: dict = {"source": str(path), "skipped": [], "converted": [], "task": "multilabel" if multilabel else
                    "single", "label_files": {split: files.report for split, files in read.items()}}
    scan_cache = ScanCache.load(scan_cache_file(scan_cache_dir, path.parent if path.is_file() else path)) \
        if scan_cache_dir else None
    index = {name: i for i, name in enumerate(every)}
    reader = Reader(report, converted_dir, scan_cache, excluded, corrections=corrections, class_names=every)
    if corrections is not None:
        corrections.check_classes(every, multilabel)
    scanned = reader.scanned
    try:
        splits = {}
        for split, files in read.items():
            by_split = defaultdict(list)
            for file, labels, row_split in zip(files.paths, files.labels, files.splits):
                encoded = [index[label] for label in labels] if multilabel else index[labels[0]]
                by_split[row_split or split].append((file, encoded))
            for name, candidates in by_split.items():
                splits[name] = reader.candidates(candidates)
    finally:
        if scan_cache:
            scan_cache.save()
    if "train" not in splits:
        everything = splits.pop("all", Split())
        check_usable(everything, every, path, report)
        copies = copies_of(everything, scanned, report)
        splits["train"], splits["val"] = (multilabel_split(everything, len(every), val_split, seed, copies)
                                          if multilabel else stratified_split(everything, val_split, seed, copies))
        how = "iteratively stratified" if multilabel else "stratified"
        report["layout"] = f"labels from '{path.name}', {how} split, {val_split:.0%} validation, seed {seed}"
    else:
        report["layout"] = f"labels and splits from {', '.join(f'{s}: {p.name}' for s, p in sources.items())}" \
            if path.is_dir() else f"labels and splits from '{path.name}'"
        if "all" in splits:
            raise TflError(f"Some rows of '{path}' have no split while others do. Give every row a split, or none.")
    val, test = reader.corrected(splits.get("val", Split())), reader.corrected(splits.get("test"))
    train = reader.with_labelled(reader.corrected(splits["train"]))  # last: it counts what every split's did
    check_usable(train, every, path, report)
    warn_about_missing_val_classes(val, every)
    if len(val) == 0:
        raise TflError(f"The validation split of '{path}' has no usable image. Add rows for it, or raise --val-split.")
    return checked(ImageData(every, train, val, test, report, multilabel, scanned))


def multilabel_split(split: Split, num_classes: int, val_fraction: float, seed: int,
                     groups: list[int] | None = None) -> tuple[Split, Split]:
    """Photos with several labels split so that every label keeps its share on both sides (and, given `groups`,
    copies of one photo on one side)."""
    from tfl.multilabel import iterative_split

    held_out = iterative_split(split.labels, num_classes, val_fraction, seed, groups)
    pick = lambda keep: Split([p for p, h in zip(split.paths, held_out) if h == keep],  # noqa: E731
                              [y for y, h in zip(split.labels, held_out) if h == keep])
    return pick(False), pick(True)
