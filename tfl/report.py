"""What tfl prints: the data summary, the plan table, stage headers, the closing line, metrics, export and predict
tables. Text only: these functions compute nothing and import no TensorFlow."""

from __future__ import annotations

import csv
import io
import json
import re


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def describe_unfreeze(unfreeze_blocks: int | str) -> str:
    if unfreeze_blocks == "all":
        return "whole backbone"
    if unfreeze_blocks == 0:
        return "head only"
    return f"top {unfreeze_blocks} blocks"


def data_summary(class_names: list[str], report: dict) -> str:
    """What was read: classes and images per split, the layout, and the files skipped or converted (a few named)."""
    photos = report.get("images", {})
    sizes = " / ".join(f"{photos.get(name, sum(c.values())):,} {name}" for name, c in report["counts"].items())
    kind = "labels (several per photo)" if report.get("task") == "multilabel" else "classes"
    lines = [f"Data: {len(class_names)} {kind}, {sizes} images ({report['layout']})"]
    for split, read in report.get("label_files", {}).items():
        lines.append(f"Label file {read['label_file']}: {read['csv_layout']}; {read['matched']:,} of {read['rows']:,} "
                     f"rows name a photo found under {read['images_folder']}")
        if read.get("note"):
            lines.append(f"  {read['note'][0].upper()}{read['note'][1:]}.")
        for reason, found in read["problems"].items():
            lines.append(f"  {found['rows']:,} row(s) {reason}, e.g. {'; '.join(found['examples'][:2])}")
    skipped, skipped_found = report["skipped"], report.get("skipped_found", len(report["skipped"]))
    if skipped:
        lines.append(f"Skipped {skipped_found} unusable file(s) (listed in a run's checks.csv):")
        lines += [f"  {item['path']}: {item['reason']}" for item in skipped[:5]]
        if skipped_found > 5:
            lines.append(f"  ... and {skipped_found - 5} more")
    if report["converted"]:
        lines.append(f"Converted {len(report['converted'])} file(s) TensorFlow cannot decode to PNG.")
    if report.get("exclude_file"):
        lines.append(f"Left out {report['excluded']} photo(s) listed in {report['exclude_file']}")
    if report.get("corrections"):
        fixes = report["corrections"]
        lines.append(f"Corrections from {fixes['file']}: {fixes['relabelled']} photo(s) relabelled, {fixes['excluded']} "
                     f"left out, {fixes['labelled']} newly labelled added to training")
        if fixes["unmatched"]:
            lines.append(f"  {fixes['unmatched']} of its row(s) match no photo of the data (the first: "
                         f"{fixes['unmatched_examples'][0]}): a review of other data, or files moved since")
    if report.get("checks"):
        from tfl.checks import summary_lines

        lines += summary_lines(report["checks"])
    if report.get("split_keeps_copies_together"):
        lines.append(f"  the split keeps the {report['split_keeps_copies_together']} photos that are copies of "
                     "another on one side, so none is in both training and validation")
    return "\n".join(lines)


def early_stop_line(stage, state, stages: list) -> str:
    """Why a stage ended before its last epoch, and whether it beat the stages before it."""
    line = f"{stage.name}: stopped after {state.stage_epochs} of {stage.epochs} epochs, with no progress on validation"
    if state.best["stage"] < state.stage:
        earlier = stages[state.best["stage"]].name
        return (f"{line}; it never beat {earlier}'s best epoch ({state.best['epoch']}), which the run keeps: this set "
                "gains nothing from moving these blocks")
    return f"{line}; its epoch {state.best['epoch']} is the run's best so far"


def probe_line(found: dict) -> str:
    """The label probe's result at the start of training."""
    if not found["label_issues_found"]:
        return f"Label probe ({found['label_probe_seconds']:.1f}s): no label doubted"
    first = found["label_issues"][0]
    return (f"Label probe ({found['label_probe_seconds']:.1f}s): a linear probe on the backbone's features doubts "
            f"{found['label_issues_found']} label(s), the likeliest {first['path']} (labelled {first['label']}, "
            f"looks like {first['probe_says']}); label_issues.csv ranks them, and after training `tfl review` shows "
            "them one by one to relabel, keep or leave out")


def unknown_line(report: dict) -> str:
    """What the unknown category does, at the end of training."""
    background = report.get("background")
    tuned = (f"; tuned on {background['photos']:,} background photos, of which it flags {background['flagged']:.0%}"
             if background else "")
    return (f"Unknown ({report['seconds']:.1f}s): every artifact gets one more category, '{report['name']}', for "
            f"photos of none of the classes; it takes {report['val_flagged']:.1%} of the validation photos "
            f"(--unknown-keep {report['keep']}){tuned}; --no-unknown leaves it out")


def format_plan(rows: list[dict], class_weight: dict | None, class_names: list[str],
                reasons: list[str] | None = None) -> str:
    """The plan table (a row per stage: what trains, trainable parameters, epochs, rate), the auto plan's reasons
    and the class weights."""
    lines = [f"{'stage':<12} {'trains':<16} {'trainable params':>17} {'epochs':>7} {'lr':>9}"]
    for row in rows:
        skipped = "  (skipped)" if row["epochs"] == 0 else ""
        lines.append(f"{row['stage']:<12} {row['trains']:<16} {row['trainable_params']:>17,} {row['epochs']:>7} "
                     f"{row['learning_rate']:>9.1e}{skipped}")
    if reasons:
        lines += ["chosen from the data:"] + [f"  {reason}" for reason in reasons]
    if class_weight:
        weights = ", ".join(f"{class_names[i]} {w:.2f}" for i, w in class_weight.items())
        lines.append(f"class weights (auto, imbalanced classes): {weights}")
    else:
        lines.append("class weights: none (classes balanced enough)")
    return "\n".join(lines)


def stage_header(index: int, stages: int, stage, trainable: int, on_features: bool, resumed_after: int) -> str:
    return (f"\n── Stage {index + 1}/{stages}: {stage.name} · {describe_unfreeze(stage.unfreeze_blocks)} · "
            f"{trainable:,} trainable params · {stage.epochs} epochs · lr {stage.learning_rate:.1e}"
            f"{' · on cached features' if on_features else ''}"
            f"{f' · resumed after epoch {resumed_after}' if resumed_after else ''}")


def headline(metrics: dict) -> tuple[str, float]:
    """The figure a run is judged by: accuracy, or mean average precision when photos have several labels."""
    return ("mAP", metrics["map"]) if metrics.get("task") == "multilabel" else ("accuracy", metrics["accuracy"])


def closing_line(metrics: dict, wall_seconds: float, run_dir) -> str:
    name, value = headline(metrics)
    test = f" · test {name} {headline(metrics['test'])[1]:.4f}" if "test" in metrics else ""
    extra = (f" · micro F1 {metrics['micro_f1']:.4f} at the per-label thresholds" if metrics.get("task") ==
             "multilabel" else "")
    return (f"\nBest validation {name} {value:.4f}{extra} (stage {metrics['best_epoch']['stage']}, epoch "
            f"{metrics['best_epoch']['epoch']}; chosen on this validation set, so optimistic){test} · wall time "
            f"{format_duration(wall_seconds)} · run {run_dir}\n{calibration_line(metrics['calibration'])}")


def calibration_line(calibration: dict) -> str:
    """What the temperature did to the scores, and how far the calibration error can be told from chance."""
    measured = (f"calibration error (ECE) {calibration['ece_before']:.3f} before, {calibration['ece_after']:.3f} "
                f"after, on {calibration['measured_on']:,} validation scores")
    if calibration["temperature"] == 1.0 and calibration.get("p_value") is not None:
        said = (f"Scores as trained (the fitted temperature, {calibration['fitted_temperature']:.2f}, did not better "
                f"the likelihood beyond chance: p = {calibration['p_value']:.2f}): {measured}")
    elif calibration["temperature"] == 1.0:
        said = f"Scores as trained (no temperature): {measured}"
    else:
        said = f"Scores calibrated by a temperature of {calibration['temperature']:.2f}: {measured}"
    floor = calibration["ece_if_calibrated"]
    chance = (" (so these differ by chance)" if max(calibration["ece_before"], calibration["ece_after"]) <= floor
              else "")
    said = f"{said}; a perfectly calibrated model would measure about {floor:.3f} on as many{chance}"
    if "debiased_before" not in calibration:  # runs trained before tfl measured it
        return said + "."
    return (f"{said}. Less its sampling noise (debiased, equal-mass bins): {calibration['debiased_before']:.3f} "
            f"before, {calibration['debiased_after']:.3f} after.")


def format_metrics(metrics: dict, run_dir) -> str:
    """`tfl evaluate`'s table: the totals, then precision, recall, F1 and support per class."""
    if metrics.get("task") == "multilabel":
        lines = [f"Run {run_dir} on {metrics['num_images']} images: mAP {metrics['map']:.4f}, micro F1 "
                 f"{metrics['micro_f1']:.4f}, macro F1 {metrics['macro_f1']:.4f}, exact match "
                 f"{metrics['exact_match']:.4f}",
                 f"{'label':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'AP':>7} {'threshold':>9} {'support':>8}"]
        for name, row in metrics["per_class"].items():
            ap = "n/a" if row["ap"] is None else f"{row['ap']:.3f}"
            lines.append(f"{name:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} {ap:>7} "
                         f"{row['threshold']:>9.3f} {row['support']:>8}")
        return "\n".join(lines + analysis_line(metrics))
    lines = [f"Run {run_dir} on {metrics['num_images']} images: accuracy {metrics['accuracy']:.4f}, "
             f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}",
             f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} {row['support']:>8}")
    skipped = metrics.get("skipped", [])
    if skipped:
        lines.append(f"Skipped {len(skipped)} unusable file(s):")
        lines += [f"  {item['path']}: {item['reason']}" for item in skipped[:5]]
        lines += [f"  ... and {len(skipped) - 5} more"] if len(skipped) > 5 else []
    if metrics.get("converted"):
        lines.append(f"Converted {metrics['converted']} file(s) TensorFlow cannot decode (TIFF...) to read them.")
    return "\n".join(lines + unknown_lines(metrics.get("unknown")) + analysis_line(metrics))


def unknown_lines(unknown: dict | None) -> list[str]:
    """What the unknown category took, on the evaluated photos and on --unknown-data."""
    if not unknown or unknown.get("flagged") is None:
        return []
    lines = [f"Unknown: the category takes {unknown['flagged']:.1%} of these photos (of the classes)"]
    outside = unknown.get("unknown_data")
    if outside:
        lines.append(f"Unknown: it takes {outside['flagged']:.1%} of the {outside['photos']:,} photos of "
                     f"{outside['source']} (of none of the classes); AUROC {outside['auroc']:.3f}")
    return lines


def analysis_line(metrics: dict) -> list[str]:
    """Where `tfl evaluate` put the error analysis, if it wrote one."""
    return [f"Mistakes, curves and report.html of this evaluation: {metrics['analysis']}"] if "analysis" in metrics \
        else []


def format_export_report(rows: list[dict]) -> str:
    """A row per artifact (size, accuracy, change and agreement against the Keras model, latency), then which ran
    fastest here."""
    lines = [f"{'artifact':<36} {'size':>10} {'val acc':>8} {'change':>8} {'agree':>7} {'ms/img':>7}"]
    multilabel = any("map" in row for row in rows)
    for row in rows:
        score = row.get("map", row.get("accuracy"))
        accuracy = "n/a" if score is None else f"{score:.4f}"
        change = ("ref" if "top1_agreement" not in row else "n/a" if row.get("accuracy_change") is None
                  else f"{row['accuracy_change']:+.4f}")
        agreement = row.get("label_agreement", row.get("top1_agreement"))
        agree = f"{agreement:.1%}" if "top1_agreement" in row else "ref"
        lines.append(f"{row['file']:<36} {row['size_bytes'] / 1e6:>8.2f}MB {accuracy:>8} {change:>8} "
                     f"{agree:>7} {row['latency_ms_batch1']:>7.2f}")
    notes = ["Several labels per photo: 'val acc' is the mAP, 'agree' the share of (photo, label) decisions at the "
             "thresholds that agree with the Keras model."] if multilabel else []
    notes += [calibration_line(row["calibration"]) for row in rows if "calibration" in row]
    notes += [bias_correction_line(row) for row in rows if "bias_correction" in row]
    notes += [fallback_line(row) for row in rows if "fallback" in row]
    notes += [below_target_line(row) for row in rows if "below_target" in row]
    return "\n".join(lines + notes + [fastest_line(rows)])


def below_target_line(row: dict) -> str:
    """A quantized file below its target that --no-fallback kept as the converter wrote it."""
    return (f"{row['file']}: below its target or the margin apps need ({row['below_target']}), and kept as the "
            "converter wrote it, as --no-fallback asks. !!! Check it before shipping it, or export it again "
            "without --no-fallback. !!!")


def bias_correction_line(row: dict) -> str:
    """What int8's bias correction (tfl/quantize.py) changed."""
    correction, converted = row["bias_correction"], row["bias_correction"]["converted"]
    drop = (f", {-converted['accuracy_drop'] * 100:+.1f} points of accuracy" if "accuracy_drop" in converted else "")
    corrected = row["fallback"]["fully_quantized"] if "fallback" in row else row
    return (f"{row['file']}: as the converter quantized it, it agreed with the Keras model on "
            f"{converted['agreement']:.1%}{drop}; with each layer's bias corrected on {correction['images']} "
            "calibration photos (its outputs' means matched to the float model's), on "
            f"{corrected.get('agreement', corrected.get('top1_agreement')):.1%}.")


def fallback_line(row: dict) -> str:
    """What the quantization fallback (tfl/quantize.py) did to one file."""
    fallback = row["fallback"]
    first, after = fallback["fully_quantized"], fallback["after"]
    how = "quantized and bias-corrected" if "bias_correction" in row else "the converter quantized it"
    short = ("which meets its target but not the margin apps need, since they resize photos their own way"
             if fallback.get("fully_quantized_met_target") else "below its target")
    said = (f"{row['file']}: as {how}, it agreed with the Keras model on {first['agreement']:.1%}, "
            f"{short} ({fallback['target']}; searched to {fallback['searched_to']}); ")
    if not fallback["layers_in_float"]:
        return said + ("keeping operations in float did no better, so it is kept as it was" + (
            "." if fallback["target_met"] else
            ". !!! It misses its target: check it before shipping it, or use float16. !!!"))
    outcome = ("and meets the target." if fallback["target_met"] else "still short of the target (the closest within "
               "its limit is kept). !!! Check it before shipping it, or use float16. !!!")
    kept_as = fallback["kept_as"]
    whole = (" Every operation is in float16: this file is the float16 one in effect." if kept_as == "float16" and
             fallback["layers_in_float"] == fallback["layers"] else "")
    return said + (f"with the {fallback['layers_in_float']} of {fallback['layers']} operations that lose most kept in "
                   f"{kept_as} it agrees on {after['agreement']:.1%}, {outcome}{whole}")


def fastest_line(rows: list[dict]) -> str:
    """Which artifact runs fastest here: int8 is not always it (on x86 CPUs without VNNI, XNNPACK's int8 kernels are
    slower than its float32 ones for small models), so the report says what was measured, not what is expected."""
    fastest = min(rows, key=lambda row: row["latency_ms_batch1"])
    return (f"Fastest at batch 1 on this machine: {fastest['file']} ({fastest['latency_ms_batch1']:.2f} ms per image); "
            "on another device, export there or measure there.")


# and a non-UTF-8 name's bytes; a carriage return only where it ends no line (CSV lines end in \r\n)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]|\r(?!\n)")


def terminal_text(text: str) -> str:
    """Text as tfl prints it: control characters but line breaks and tabs escaped (\\x1b), so that a file or class
    name cannot move the cursor, retitle the terminal or worse (names are the user's data, or anyone's)."""
    return CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()) & 0xff:02x}", text)


def format_predictions(rows: list[dict], output_format: str) -> str:
    """`tfl predict`'s output: a line per image (table), a row per image and rank (csv), or JSON. With several
    labels per photo, the labels whose score reaches their threshold come first ("labels")."""
    multilabel = any("labels" in row for row in rows)
    unknown = any("unknown" in row for row in rows)  # the model has the unknown category (tfl/unknown.py)
    scored = lambda pairs: [{"label": l, "score": round(s, 5)} for l, s in pairs]  # noqa: E731
    if output_format == "json":
        return json.dumps([{"path": r["path"], **({"error": r["error"]} if "error" in r else
                                                  {"top": scored(r["top"])} | (
                                                      {"labels": scored(r["labels"])} if "labels" in r else {}) | (
                                                      {"unknown": r["unknown"],
                                                       "unknown_score": round(r["unknown_score"], 5)}
                                                      if "unknown" in r else {}))}
                           for r in rows], indent=2)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "score", "error"] + (["above_threshold"] if multilabel else [])
                        + (["unknown"] if unknown else []))
        for row in rows:
            flag = (["yes" if row.get("unknown") else "no"] if "unknown" in row else [""]) if unknown else []
            if "error" in row:
                writer.writerow([row["path"], "", "", "", row["error"]] + ([""] if multilabel else []) + flag)
            chosen = dict(row.get("labels", []))  # several labels: every one above its threshold, top-k or not
            listed = sorted({**dict(row.get("top", [])), **chosen}.items(), key=lambda pair: -pair[1])
            for rank, (label, score) in enumerate(listed, start=1):
                writer.writerow([row["path"], rank, label, f"{score:.5f}", ""] +
                                (["yes" if label in chosen else "no"] if multilabel else []) + flag)
        return buffer.getvalue().rstrip("\n")
    lines = []
    for row in rows:
        if "error" in row:
            lines.append(f"{row['path']}: ERROR {row['error']}")
        elif "labels" in row:
            chosen = ", ".join(f"{label} {score:.3f}" for label, score in row["labels"]) or "no label above its threshold"
            lines.append(f"{row['path']}: {chosen}")
        else:
            none_of_them = (f"UNKNOWN (none of the classes, score {row['unknown_score']:.3f}); closest: "
                            if row.get("unknown") else "")
            lines.append(f"{row['path']}: {none_of_them}" + ", ".join(f"{label} {score:.3f}" for label, score
                                                                        in row["top"]))
    return "\n".join(lines)


def format_checks(report: dict, listed: int = 10) -> str:
    """`tfl check`'s output: the summary, then each list, the likeliest first, `listed` entries each."""
    from tfl.checks import found

    checks = report["checks"]
    lines = [data_summary(report["classes"], report)]
    titles = {"conflicting_labels": "Copies of one photo with different labels (fix the label, or drop a copy)",
              "leaks_across_splits": "Copies of one photo in different splits (a leak: figures come out optimistic)",
              "exact_duplicates": "Identical files", "near_duplicates": "Near duplicates (perceptual hash within "
              "4 of 64 bits)"}
    for key, title in titles.items():
        groups = checks.get(key, [])
        if groups:
            lines.append(f"\n{title}: {found(checks, key)} group(s)")
            for group in groups[:listed]:
                lines.append("  " + "  =  ".join(f"{path} ({label}{', ' + split if split else ''})" for path, label,
                                                split in zip(group["paths"], group["labels"], group["splits"])))
    if checks.get("unusable"):
        lines.append(f"\nPhotos unlikely to help: {found(checks, 'unusable')}")
        lines += [f"  {item['path']}: {'; '.join(item['issues'])}" for item in checks["unusable"][:listed]]
    if checks.get("label_issues"):
        lines.append(f"\nLabels the probe doubts, likeliest errors first: {checks['label_issues_found']} (the "
                     f"{len(checks['label_issues'])} likeliest in the JSON report)")
        lines += [f"  {item['path']}: labelled {item['label']}, looks like {item['probe_says']} (probability of its "
                  f"label {item['probability_of_label']:.3f})" for item in checks["label_issues"][:listed]]
    seconds = checks.get("seconds", {})
    if seconds:
        lines.append("\n" + ", ".join(f"{what.replace('_', ' ')} {value:.1f} s" for what, value in seconds.items()))
    return "\n".join(lines)
