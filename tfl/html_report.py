"""One self-contained report.html per run, built from the run's own files: data health, the plan and its reasons,
the training curves, the figures per class, the most confident mistakes with their heatmaps, and the exports. Images
are embedded, nothing is fetched: it reads offline and when mailed. `tfl report RUN` builds it again."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tfl.fileio import atomic_write_text
from tfl.errors import TflError
from tfl.runs import UNWRITABLE_RUN, RunFolder, read_run_file


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .2em .7em; border-bottom: 1px solid #eee; }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; } .gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 180px; font-size: 13px; } figure img { width: 180px; height: 180px; }
.bad { color: #b00020; } code { background: #f4f4f4; padding: 0 .25em; }
"""
# Any script error shows on the page (and the browser test reads it); the page sets data-rendered when loaded.
SCRIPT = """
window.addEventListener("error", function (e) {
  document.getElementById("errors").textContent += (e.message || "error") + "\\n"; });
document.addEventListener("DOMContentLoaded", function () { document.body.dataset.rendered = "yes"; });
"""


def embedded(path: Path, alt: str, css: str = "plot") -> str:
    if not path.is_file():
        return ""
    kind = "png" if path.suffix == ".png" else "jpeg"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}">'


def table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f'<td class="n">{value:.4f}</td>'
        if isinstance(value, int):
            return f'<td class="n">{value:,}</td>'
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows) + \
        "</table>"


def read_json(path: Path) -> dict:
    return read_run_file(path, json.loads) if path.is_file() else {}


def data_section(report: dict) -> str:
    from tfl.checks import summary_lines

    checks = report.get("checks", {})
    parts = [f"<p>{html.escape(report.get('layout', ''))}</p>"]
    if report.get("counts"):
        parts.append(table(["split", "photos"], [[name, sum(counts.values())] for name, counts in
                                                 report["counts"].items()]))
    if checks:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line.strip())}</li>" for line in summary_lines(checks))
                     + "</ul>")
        groups = checks.get("conflicting_labels", []) + checks.get("leaks_across_splits", [])
        if groups:
            parts.append(table(["copies (conflicting labels or across splits)", "labels", "splits"],
                               [[" = ".join(g["paths"]), ", ".join(g["labels"]),
                                 ", ".join(str(s) for s in g["splits"])] for g in groups[:20]]))
    if report.get("skipped"):
        parts.append(f"<p>{report.get('skipped_found', len(report['skipped']))} unusable file(s) skipped.</p>")
    return "".join(parts)


def class_section(metrics: dict, analysis: dict) -> str:
    per_class, extra = metrics.get("per_class", {}), analysis.get("per_class", {})
    if metrics.get("task") == "multilabel":
        rows = [[name, r["precision"], r["recall"], r["f1"], r["ap"], r["threshold"], r["support"]]
                for name, r in per_class.items()]
        return table(["label", "precision", "recall", "F1", "AP", "threshold", "support"], rows)
    rows = [[name, r["precision"], r["recall"], r["f1"], extra.get(name, {}).get("roc_auc"),
             extra.get(name, {}).get("ap"), r["support"]] for name, r in per_class.items()]
    return table(["class", "precision", "recall", "F1", "ROC AUC", "AP", "support"], rows)


def mistakes_section(run: RunFolder, analysis: dict) -> str:
    if not analysis.get("mistakes"):
        return "<p>No mistakes on the validation photos.</p>" if analysis else "<p>No analysis in this run.</p>"
    figures = []
    for index, mistake in enumerate(analysis["mistakes"]):
        image = embedded(run.mistakes_dir / f"{index}.jpg", Path(mistake["path"]).name, "thumb")
        figures.append(f"<figure>{image}<figcaption><b class=bad>{html.escape(mistake['predicted'])}</b> "
                       f"{mistake['confidence']:.2f}, labelled {html.escape(mistake['label'])}<br>"
                       f"<small>{html.escape(Path(mistake['path']).name)}</small></figcaption></figure>")
    pairs = table(["classes", "mistakes", "which way"],
                  [[" / ".join(p["classes"]), p["mistakes"], "; ".join(f"{k}: {v}" for k, v in p["as"].items())]
                   for p in analysis.get("confused_pairs", [])])
    heat = ("Red marks where the model looked (Grad-CAM on the backbone's last feature map)."
            if analysis.get("grad_cam") else "")
    return (f"<p>{analysis['mistakes_total']} of the validation photos are wrong; the most confident mistakes first. "
            f"{heat}</p><div class=gallery>{''.join(figures)}</div><h3>Most confused pairs</h3>{pairs}")


def thumbnail(path: str, caption: str) -> str:
    """A photo from outside the run, shrunk and embedded (nothing when it is gone or unreadable)."""
    import io

    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((180, 180))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
    except (OSError, ValueError):
        return ""
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f'<figure><img class=thumb alt="{html.escape(Path(path).name)}" src="data:image/jpeg;base64,{data}">'
            f"<figcaption>{html.escape(caption)}<br><small>{html.escape(Path(path).name)}</small></figcaption></figure>")


def unknown_section(unknown: dict | None) -> str:
    """What the unknown category does: the share of the validation photos it takes, and with --unknown-data (an
    evaluation) the share of those photos and the AUROC; a few of the photos it took."""
    if not unknown:
        return "<p>No unknown category in this run.</p>"
    if "flagged" not in unknown and "val_flagged" not in unknown:
        return f"<p>{html.escape(unknown.get('method', ''))}</p>"
    share = unknown.get("val_flagged", unknown.get("flagged"))
    text = (f"<p>Every artifact has one more category, <code>{html.escape(unknown.get('name', 'unknown'))}</code>, "
            f"that wins for photos of none of the classes. It takes {share:.1%} of the photos evaluated"
            + (f" (<code>--unknown-keep {unknown['keep']}</code>)" if "keep" in unknown else "") + ".</p>")
    outside = unknown.get("unknown_data")
    if outside:
        text += (f"<p>Of the {outside['photos']:,} photos of <code>{html.escape(outside['source'])}</code> (of none "
                 f"of the classes) it takes {outside['flagged']:.1%}; AUROC {outside['auroc']:.3f}.</p>")
    examples = (outside or {}).get("examples") or unknown.get("val_flagged_examples") or []
    figures = "".join(thumbnail(path, "taken as unknown") for path in examples)
    return text + (f"<div class=gallery>{figures}</div>" if figures else "")


def export_section(run: RunFolder) -> str:
    rows = read_json(run.export_report_file)
    if not rows:
        return "<p>Not exported yet (<code>tfl export</code>).</p>"
    return table(["file", "size MB", "accuracy", "top-1 agreement", "unknown agreement", "ms per image"],
                 [[r["file"], round(r["size_bytes"] / 1e6, 2), r.get("map", r.get("accuracy")),
                   r.get("top1_agreement"), r.get("unknown_agreement"), r["latency_ms_batch1"]] for r in rows.values()])


def build_report(run_dir: str | Path, name: str | None = None) -> Path:
    """Write (or write again) the report.html of a run (`name`: the run's, while it still trains in <name>.partial)
    or of an evaluation's folder (no config.yaml: `name` is its title) from its files; its path."""
    run = RunFolder(Path(run_dir))
    name = name or run.name
    is_run = run.config_file.is_file()
    metrics, config = read_json(run.metrics_file), run.config if is_run else {}
    report, analysis = read_json(run.data_report_file), read_json(run.analysis_file)
    multilabel = metrics.get("task") == "multilabel"
    headline = (f"mAP {metrics.get('map', 0):.4f}" if multilabel else f"accuracy {metrics.get('accuracy', 0):.4f}")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in config.get("plan_reasons", []))
    stages = table(["stage", "epochs", "learning rate", "blocks trained"],
                   [[s["name"], s["epochs"], s["learning_rate"], str(s["unfreeze_blocks"])]
                    for s in config.get("stages", [])])
    figures = "".join(embedded(path, alt) for path, alt in (
        (run.confusion_file, "confusion matrix"), (run.precision_recall_file, "precision-recall per class"),
        (run.roc_file, "ROC per class")))
    sections = [
        ("Data", data_section(report)),
        ("Plan", f"{stages}<ul>{reasons}</ul>"),
        ("Training", embedded(run.curves_file, "training curves")),
        ("Per class", class_section(metrics, analysis) + figures),
        ("Mistakes", mistakes_section(run, analysis) if not multilabel else "<p>See the per-label table.</p>"),
        ("Calibration", embedded(run.reliability_file, "reliability diagram")),
        ("None of these", unknown_section(metrics.get("unknown"))),
        ("Exports", export_section(run)),
    ] if is_run else [
        ("Data", data_section(report)),
        ("Per class", class_section(metrics, analysis) + figures),
        ("Mistakes", mistakes_section(run, analysis) if not multilabel else "<p>See the per-label table.</p>"),
        ("None of these", unknown_section(metrics.get("unknown"))),
    ]
    body = "".join(f"<h2>{title}</h2>{content}" for title, content in sections)
    summary = (f"{html.escape(str(config.get('arch')))} at {config.get('image_size')} px, validation {headline}, "
               f"{len(run.class_names)} classes, trained in {metrics.get('wall_seconds', 0):.0f} s." if is_run else
               f"{headline} on {metrics.get('num_images', 0):,} photos, {len(run.class_names)} classes.")
    heading = f"Run {name}" if is_run else name[:1].upper() + name[1:]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>tfl {html.escape(heading)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(heading)}</h1>"
            f"<p>{summary}</p>{body}<pre id=errors></pre></body></html>")
    try:
        atomic_write_text(run.report_file, page)
    except PermissionError as exc:
        raise TflError(f"Cannot write '{run.report_file}': {exc.strerror}. {UNWRITABLE_RUN}") from None
    return run.report_file
