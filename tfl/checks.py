"""Data health, before training: exact and near-duplicate photos (within a class, across classes, across splits),
photos unlikely to be usable (nearly blank, very dark or bright, very blurry, extreme aspect ratio), class imbalance,
and likely label errors (cleanlab's confident learning on out-of-fold predictions of the cached features).

The hashes and grey-level figures come from the pre-training scan (tfl/scan.py), which decodes every file anyway, so
the checks add seconds. The duplicate groups also keep the split honest: each group goes to one side."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from tfl.scan import ScannedFile

NEAR_RADIUS = 4  # bits of the 64-bit perceptual hash two near duplicates differ in at most
DARK, BRIGHT = 20.0, 240.0  # mean grey level below / above which a photo is nearly black / white
BLANK_CONTRAST = 4.0  # grey-level spread below which a photo shows nothing
BLURRY_SHARPNESS = 1.5  # variance of the Laplacian at 128 px below which a photo is very blurry
EXTREME_ASPECT = 4.0  # long side / short side
IMBALANCE_RATIO = 3.0
LISTED = 10  # entries per list on screen
# Entries per list that data_report.json keeps (its "found" holds each list's full count); a run's checks.csv lists
# every photo of every list, so the JSON stays a few hundred KB at a million photos.
REPORTED = 200
LISTS = ("exact_duplicates", "near_duplicates", "conflicting_labels", "leaks_across_splits", "unusable")


class DisjointSets:
    """Union-find over photo indices: groups of photos linked by being (near) copies of each other."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)

    def groups(self) -> list[list[int]]:
        found = defaultdict(list)
        for i in range(len(self.parent)):
            found[self.find(i)].append(i)
        return [members for members in found.values() if len(members) > 1]


def hash_bits(phashes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) if h else 0 for h in phashes], dtype=np.uint64)


def near_pairs(phashes: list[str], radius: int = NEAR_RADIUS) -> list[tuple[int, int, int]]:
    """(i, j, distance), i < j in order, of every pair whose perceptual hashes differ in at most `radius` bits.

    Not all pairs: an index. Cut the 64 bits into radius + 1 bands; two hashes that differ in at most `radius` bits
    agree exactly on one band at least (there are more bands than differing bits), so only hashes that share a band
    value are compared (banded locality-sensitive hashing, exact at this radius). The work grows with the photos
    and the sizes of the buckets, not with their square: 50,000 random hashes with 1% planted copies took 0.74 s
    against 8.7 s for all pairs, the same pairs (benchmarks/README.md)."""
    bits = hash_bits(phashes)
    # A hash with almost every bit alike comes from a featureless image (blank, a plain gradient): such images
    # would all match each other, so they are left to the exact (byte) comparison.
    set_bits = np.bitwise_count(bits)
    valid = np.array([bool(h) for h in phashes], dtype=bool) & (set_bits > 2) & (set_bits < 62)
    candidates = np.flatnonzero(valid)
    found = []
    for low, width in bands(radius):
        keys = (bits[candidates] >> np.uint64(low)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        ordered, starts = candidates[order], np.flatnonzero(np.diff(keys[order])) + 1
        for members in np.split(ordered, starts):
            if len(members) < 2:
                continue
            first, second = np.triu_indices(len(members), 1)
            i, j = members[first], members[second]
            distance = np.bitwise_count(bits[i] ^ bits[j])
            close = distance <= radius
            found.append(np.stack([np.minimum(i, j)[close], np.maximum(i, j)[close], distance[close]], axis=1))
    if not found:
        return []
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)  # a pair shares several bands: once each
    return [(int(i), int(j), int(d)) for i, j, d in pairs]


def bands(radius: int, bits: int = 64) -> list[tuple[int, int]]:
    """(lowest bit, width) of radius + 1 bands that cover the hash, as even as they can be."""
    count = radius + 1
    widths = [bits // count + (1 if k < bits % count else 0) for k in range(count)]
    return [(sum(widths[:k]), widths[k]) for k in range(count)]


@dataclass
class Photo:
    path: str
    label: object  # an int, or a list of ints with several labels per photo
    split: str | None
    scanned: ScannedFile


def duplicate_groups(photos: list[Photo]) -> tuple[list[list[int]], list[list[int]]]:
    """(exact groups, near groups): photos with the same bytes; photos within NEAR_RADIUS bits of each other's
    perceptual hash (chained), leaving out groups that are exact copies only."""
    by_md5 = defaultdict(list)
    for i, photo in enumerate(photos):
        if photo.scanned.md5:
            by_md5[photo.scanned.md5].append(i)
    exact = [members for members in by_md5.values() if len(members) > 1]
    sets = DisjointSets(len(photos))
    for members in exact:
        for other in members[1:]:
            sets.union(members[0], other)
    closest: dict[int, int] = {}
    pairs = near_pairs([p.scanned.phash for p in photos])
    for i, j, distance in pairs:
        sets.union(i, j)
    for i, j, distance in pairs:
        root = sets.find(i)
        closest[root] = min(closest.get(root, NEAR_RADIUS + 1), distance)
    exact_sets = {frozenset(members) for members in exact}
    near = [members for members in sets.groups() if frozenset(members) not in exact_sets]
    near.sort(key=lambda members: closest.get(sets.find(members[0]), NEAR_RADIUS + 1))  # the closest copies first
    return exact, near


def same_label(photos: list[Photo], members: list[int]) -> bool:
    return len({str(photos[i].label) for i in members}) == 1


def unusable(photo: ScannedFile) -> list[str]:
    """Why a photo is unlikely to help training (empty when it looks fine)."""
    issues = []
    if photo.contrast < BLANK_CONTRAST:
        issues.append(f"nearly blank (grey-level spread {photo.contrast:.1f})")
    elif photo.brightness < DARK:
        issues.append(f"very dark (mean grey {photo.brightness:.0f} of 255)")
    elif photo.brightness > BRIGHT:
        issues.append(f"nearly white (mean grey {photo.brightness:.0f} of 255)")
    if photo.contrast >= BLANK_CONTRAST and photo.sharpness < BLURRY_SHARPNESS:
        issues.append(f"very blurry (Laplacian variance {photo.sharpness:.2f})")
    if photo.aspect > EXTREME_ASPECT:
        issues.append(f"extreme aspect ratio ({photo.aspect:.1f}:1; the square resize squashes it)")
    return issues


def health_report(photos: list[Photo], class_names: list[str]) -> dict:
    """What data_report.json's "checks" holds: every group and photo found, by kind."""
    exact, near = duplicate_groups(photos)

    def described(members: list[int]) -> dict:
        return {"paths": [photos[i].path for i in members],
                "labels": [label_names(photos[i].label, class_names) for i in members],
                "splits": [photos[i].split for i in members]}

    groups = [(members, "exact") for members in exact] + [(members, "near") for members in near]
    conflicts = [described(m) | {"kind": kind} for m, kind in groups if not same_label(photos, m)]
    leaks = [described(m) | {"kind": kind} for m, kind in groups
             if same_label(photos, m) and len({photos[i].split for i in m}) > 1]
    counts = Counter(label for photo in photos for label in as_list(photo.label))
    sizes = [counts.get(i, 0) for i in range(len(class_names))]
    return {
        "photos": len(photos),
        "exact_duplicates": [described(m) for m in exact],
        "near_duplicates": [described(m) for m in near],
        "conflicting_labels": conflicts,
        "leaks_across_splits": leaks,
        "unusable": [{"path": p.path, "issues": issues} for p in photos if (issues := unusable(p.scanned))],
        "imbalance": {"largest": class_names[int(np.argmax(sizes))], "smallest": class_names[int(np.argmin(sizes))],
                      "ratio": round(max(sizes) / max(1, min(sizes)), 2),
                      "imbalanced": max(sizes) >= IMBALANCE_RATIO * max(1, min(sizes))},
    }


def as_list(label) -> list[int]:
    return label if isinstance(label, list) else [label]


def label_names(label, class_names: list[str]) -> str:
    return ",".join(class_names[i] for i in as_list(label))


def grouped_split_groups(paths: list[str], scanned: dict[str, ScannedFile]) -> list[int]:
    """A group id per photo: (near) duplicates share one, every other photo has its own."""
    photos = [Photo(path, 0, None, scanned.get(path, ScannedFile(path))) for path in paths]
    exact, near = duplicate_groups(photos)
    group = list(range(len(paths)))
    for members in exact + near:
        for i in members:
            group[i] = members[0]
    return group


def found(checks: dict, key: str) -> int:
    """How many entries the list `key` has, also in a bounded report (which keeps only the first REPORTED)."""
    return checks.get("found", {}).get(key, len(checks.get(key) or []))


def bounded(report: dict) -> dict:
    """The report as data_report.json keeps it: each check's list and the skipped files cut to their first
    REPORTED entries, the full counts in checks["found"] and report["skipped_found"]."""
    skipped = report.get("skipped") or []
    report = report | {"skipped": skipped[:REPORTED], "skipped_found": report.get("skipped_found", len(skipped))}
    checks = report.get("checks")
    if checks is None:
        return report
    cut = {key: checks[key][:REPORTED] for key in LISTS if key in checks}
    counts = {key: found(checks, key) for key in LISTS if key in checks}
    return report | {"checks": checks | cut | {"found": counts}}


CHECKS_CSV_COLUMNS = ("check", "group", "path", "label", "split", "detail")


def photo_rows(report: dict):
    """A row per photo of every check's list and per skipped file (checks.csv): the check, the group it is in
    (numbered within the check), its path, label and split, and a detail: what is wrong with an unusable or skipped
    photo, or whether copies under two labels or splits are exact or near."""
    checks = report.get("checks") or {}
    for item in report.get("skipped") or []:
        yield "skipped", "", item["path"], "", "", item["reason"]
    for key in LISTS[:4]:
        for number, group in enumerate(checks.get(key) or []):
            for path, label, split in zip(group["paths"], group["labels"], group["splits"]):
                yield key, number, path, label, split or "", group.get("kind", "")  # copies: exact or near
    for item in checks.get("unusable") or []:
        yield "unusable", "", item["path"], "", "", "; ".join(item["issues"])


def groups_from_rows(rows: list[dict], key: str) -> list[dict]:
    """The groups of check `key` read back from checks.csv rows, as data_report.json spells them."""
    groups: dict[str, dict] = {}
    for row in rows:
        if row.get("check") == key:
            group = groups.setdefault(row["group"], {"paths": [], "labels": [], "splits": []} |
                                      ({"kind": row["detail"]} if row.get("detail") else {}))
            group["paths"].append(row["path"])
            group["labels"].append(row["label"])
            group["splits"].append(row["split"] or None)
    return list(groups.values())


def summary_lines(checks: dict) -> list[str]:
    """A few lines for the start of `tfl finetune` (and the head of `tfl check`)."""
    kinds = [("exact_duplicates", "group(s) of identical files"), ("near_duplicates", "group(s) of near duplicates"),
             ("conflicting_labels", "group(s) of copies with different labels"),
             ("leaks_across_splits", "group(s) of copies across splits"), ("unusable", "photo(s) unlikely to help")]
    listed = [f"{found(checks, key)} {what}" for key, what in kinds if found(checks, key)]
    lines = [f"Checks: {', '.join(listed)} (data_report.json lists them; `tfl check` shows them)" if listed else
             "Checks: no duplicates, conflicting labels or unusable photos found"]
    if checks["imbalance"]["imbalanced"]:
        imbalance = checks["imbalance"]
        lines.append(f"  classes {imbalance['ratio']:.1f}x apart ({imbalance['largest']} the largest, "
                     f"{imbalance['smallest']} the smallest)")
    if checks.get("label_issues"):
        lines.append(f"  {checks['label_issues_found']} photo(s) whose label a quick probe doubts (`tfl check` ranks "
                     "them; `tfl review RUN` shows them one by one)")
    return lines
