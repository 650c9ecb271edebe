"""explorer.html: one self-contained page per run, its whole story read back from the run.

Everything on the page comes from what the run recorded in MLflow (so a resumed run shows all
its epochs): the tags and metrics, the artifacts `architecture.png`, `receptive_field.txt` and
`learning_curve.png`, and the step-wise images the analysis logged with
`log_image(key=..., step=epochs trained)`. Images of several steps follow one epoch slider
(each shows its newest step at or before the chosen epoch); images of one step are fixed.
The page is logged as artifact `explorer.html`; MLflow's artifact view shows it (scripts run
in its sandboxed frame), and it opens from disk in any browser.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from cnnexp.analysis.fit import BEST_EPOCH, FIT_TAG, REASON_TAG
from cnnexp.report.pages import png_data_uri
from cnnexp.tracking.dashboard import image_file

ARTIFACT = "explorer.html"
USED = ("images", "architecture.png", "receptive_field.txt", "learning_curve.png")
# What each picture shows and how to read it (README "Reading the pictures" says more).
CAPTIONS = {
    "feature_maps": "Each row: a fixed validation image (its class on the left), then the "
    "block's output channels (after its activation, numbered above); bright = strong response.",
    "top_patches": "Each row: one channel's strongest validation patches, each cut at that "
    "unit's exact receptive field (light blue = outside the image). What the channel looks for.",
    "kernels": "The first conv's filters (mid grey = 0, lighter = positive, darker = negative).",
    "erf": "Effective receptive field: how strongly each input pixel moves the centre unit of the "
    "last spatial layer; the square is the theoretical receptive field.",
    "gradcam": "Grad-CAM at the last spatial layer: where the net looks for the true and for the "
    "predicted class.",
    "confusion_matrix": "Rows are true classes, columns predicted ones: the validation set "
    "during training, the test set (the tested weights) at the last epoch.",
    "misclassified": "Images the net got wrong, surest first: true label → prediction, its "
    "confidence; validation set during training, test set at the last epoch.",
}
PER_BLOCK = {"feature_maps": "Feature maps", "top_patches": "Top patches"}  # side by side
FACTS = {  # metric -> label, in the order shown
    "test_acc": "test accuracy",
    "val_acc": "best val accuracy",
    "best_epoch": BEST_EPOCH,
    "n_params": "parameters",
    "flops_per_image": "FLOPs per image",
    "receptive_field": "receptive field (px)",
    "erf_size": "effective RF (px)",
    "fit_seconds": "fit time (s)",
}
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 2em 2em;color:#222}"
    "h2{margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "figure{display:inline-block;vertical-align:top;margin:0 1.5em 1em 0;max-width:100%}"
    "figcaption{font-size:13px;color:#555;max-width:44em}"
    "img{max-width:100%;image-rendering:pixelated}"
    "#slider{position:sticky;top:0;background:#fff;padding:.6em 0;border-bottom:1px solid #ddd;"
    "z-index:1}#slider input{width:24em;vertical-align:middle}"
    "pre{font-size:12px;background:#f7f7f7;padding:.6em;overflow-x:auto}"
    ".diagnosis{font-size:18px;font-weight:600}"
    ".step.other{color:#b00;font-weight:600}"
)
# The epoch slider of explorer.html and of the compare page: every image with a data-key shows
# its newest picture at or before the chosen epoch (shots: key -> [[epoch, src or null]]; null:
# the picture the page was written with) and says which epoch it is when not the chosen one.
SCRIPT = """
const shots = JSON.parse(document.getElementById('shots').textContent);
const epochs = JSON.parse(document.getElementById('epochs').textContent);
const slider = document.getElementById('epoch');
const last = new Map();  // each image's own src: its newest step (null in shots)
for (const img of document.querySelectorAll('img[data-key]')) last.set(img, img.src);
function show(i) {
  const epoch = epochs[i];
  document.getElementById('epoch-label').textContent = epoch;
  for (const img of document.querySelectorAll('img[data-key]')) {
    const list = shots[img.dataset.key];
    let pick = list[0];
    for (const shot of list) if (shot[0] <= epoch) pick = shot;
    img.src = pick[1] || last.get(img);
    const step = img.closest('figure').querySelector('.step');
    step.textContent = 'epoch ' + pick[0] + (pick[0] === epoch ? '' : ' (none at ' + epoch + ')');
    step.classList.toggle('other', pick[0] !== epoch);
  }
}
slider.addEventListener('input', () => show(+slider.value));
show(+slider.value);
"""


def fetch(client: MlflowClient, run_id: str, folder: Path) -> Path:
    """Download the artifacts the page shows (not the checkpoints) into `folder`, quietly."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no bars on the run's console
    for item in client.list_artifacts(run_id):
        if item.path in USED:
            client.download_artifacts(run_id, item.path, str(folder))
    (folder / "images").mkdir(exist_ok=True)
    return folder


def logged_images(folder: Path) -> dict[str, dict[int, Path]]:
    """{key: {step: file}} of the stepped images in a downloaded `images/` artifact folder; the
    newest file wins where one step was logged twice."""
    found: dict[str, dict[int, tuple[int, Path]]] = {}
    for path in folder.glob("*.png"):
        if logged := image_file(path.name):
            key, step, ms = logged
            if ms >= found.setdefault(key, {}).get(step, (-1, path))[0]:
                found[key][step] = (ms, path)
    return {key: {s: p for s, (_, p) in sorted(steps.items())} for key, steps in found.items()}


def block_order(key: str) -> tuple:
    """feature_maps/conv2 before feature_maps/conv10: numbers compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def figure(key: str, shots: dict[int, Path], title: str) -> str:
    """A <figure>; several steps make it follow the slider (script), one step is fixed."""
    kind = key.split("/")[0]
    last = max(shots)
    follows = f" data-key='{html.escape(key)}'" if len(shots) > 1 else ""
    return (
        f"<figure><b>{html.escape(title)}</b> <span class='step'>epoch {last}</span><br>"
        f"<img alt='{html.escape(key)}'{follows} src='{png_data_uri(shots[last].read_bytes())}'>"
        f"<figcaption>{html.escape(CAPTIONS.get(kind, ''))}</figcaption></figure>\n"
    )


def facts_table(client: MlflowClient, run_id: str) -> str:
    metrics = client.get_run(run_id).data.metrics
    rows = []
    for name, label in FACTS.items():
        if name == "val_acc":
            values = [m.value for m in client.get_metric_history(run_id, name)]
            value = max(values) if values else None
        else:
            value = metrics.get(name)
        if value is not None:
            whole = name == "best_epoch" or abs(value) >= 1
            text = f"{value:,.0f}" if whole else f"{value:,.4f}"
            rows.append(f"<tr><td>{label}</td><td class='num'>{text}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def class_accuracy(client: MlflowClient, run_id: str) -> str:
    metrics = client.get_run(run_id).data.metrics
    prefix = "test_class_acc/"
    rows = [
        f"<tr><td>{html.escape(name[len(prefix) :])}</td><td class='num'>{value:.3f}</td></tr>"
        for name, value in sorted(metrics.items())
        if name.startswith(prefix)
    ]
    if not rows:
        return ""
    return "<figure><b>Per-class test accuracy</b><table>" + "".join(rows) + "</table></figure>"


def sections(client: MlflowClient, run_id: str, folder: Path, images: dict) -> dict[str, str]:
    """{title: HTML} of the page's sections, from the fetched artifacts in `folder`."""

    def one(key: str, title: str) -> str:
        return figure(key, images[key], title) if key in images else ""

    mapped = {k.split("/", 1)[1] for k in images if k.split("/")[0] in PER_BLOCK}
    per_block = "".join(
        f"<h3 id='{html.escape(b)}'>{html.escape(b)}</h3>\n"
        + "".join(one(f"{kind}/{b}", title) for kind, title in PER_BLOCK.items())
        for b in sorted(mapped, key=block_order)
    )
    kernels = [k for k in sorted(images, key=block_order) if k.startswith("kernels/")]
    tags = client.get_run(run_id).data.tags
    diagnosis = tags.get(FIT_TAG, "no fit diagnosis")
    reason = f" ({tags[REASON_TAG]})" if REASON_TAG in tags else ""
    rf = folder / "receptive_field.txt"
    rf_table = f"<h3>Receptive field per layer</h3><pre>{html.escape(rf.read_text())}</pre>"
    return {
        "Fit": f"<p class='diagnosis'>{html.escape(diagnosis)}</p><p>{html.escape(reason)}</p>"
        + static(folder / "learning_curve.png", "Learning curves"),
        "Architecture": static(folder / "architecture.png", "Blocks, output shapes, RF")
        + (rf_table if rf.is_file() else ""),
        "Blocks": per_block,
        "Kernels": "".join(one(k, k) for k in kernels),
        "Where the net looks": one("erf", "Effective receptive field") + one("gradcam", "Grad-CAM"),
        "Mistakes": one("confusion_matrix", "Confusion matrix")
        + class_accuracy(client, run_id)
        + one("misclassified", "Misclassified test images"),
    }


def explorer_html(client: MlflowClient, run_id: str) -> str:
    """The run's page (see the module docstring)."""
    tags = client.get_run(run_id).data.tags
    name = tags.get("mlflow.runName", run_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = fetch(client, run_id, Path(tmp))
        images = logged_images(folder / "images")
        parts = {t: part for t, part in sections(client, run_id, folder, images).items() if part}
        stepped = {k: v for k, v in images.items() if len(v) > 1}
        shots = {
            k: [[s, png_data_uri(p.read_bytes())] for s, p in v.items()] for k, v in stepped.items()
        }
    epochs = sorted({step for steps in stepped.values() for step in steps})
    anchor = {title: title.lower().replace(" ", "-") for title in parts}
    body = "".join(f"<h2 id='{anchor[t]}'>{t}</h2>\n{content}" for t, content in parts.items())
    nav = " · ".join(f"<a href='#{anchor[t]}'>{t}</a>" for t in parts)
    context = " · ".join(
        f"{key} {html.escape(tags[key])}" for key in ("model", "data", "activation") if key in tags
    )
    slider = script = ""
    if epochs:
        slider = (
            f"<div id='slider'>epoch <input id='epoch' type='range' min='0' "
            f"max='{len(epochs) - 1}' value='{len(epochs) - 1}' step='1'> after epoch "
            f"<b id='epoch-label'>{epochs[-1]}</b> <small>(images logged after epochs "
            f"{', '.join(map(str, epochs))}; 0 = before training)</small></div>"
        )
        script = (
            f"<script type='application/json' id='shots'>{json.dumps(shots)}</script>"
            f"<script type='application/json' id='epochs'>{json.dumps(epochs)}</script>"
            f"<script>{SCRIPT}</script>"
        )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)}: cnnexp explorer</title><style>{STYLE}</style></head>\n"
        f"<body>\n<h1>{html.escape(name)}</h1>\n<p>{context} · run {run_id}</p>\n"
        f"{facts_table(client, run_id)}\n<p>{nav}</p>\n{slider}\n{body}{script}</body></html>\n"
    )


def static(path: Path, title: str) -> str:
    if not path.is_file():
        return ""
    return (
        f"<figure><b>{html.escape(title)}</b><br>"
        f"<img alt='{html.escape(path.name)}' src='{png_data_uri(path.read_bytes())}'></figure>\n"
    )


def log_explorer(client: MlflowClient, run_id: str) -> None:
    """Write the run's page and log it as artifact `explorer.html`."""
    client.log_text(run_id, explorer_html(client, run_id), ARTIFACT)
