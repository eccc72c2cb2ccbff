"""`ssl-aug report`: one self-contained HTML page for a run folder and for an ablation folder, rendered in
headless Chromium (skipped with a reason when no browser is installed): no console errors, every <img> has
a non-zero natural size; bad folders -> one line."""

import json
import re
import shutil
import subprocess

import pytest

from ssl_aug.errors import SslAugError
from ssl_aug.workflows.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src)
  || "error").slice(0, 80)), true);
const __err = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); __err(...a); };
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)).length;
  const out = document.createElement("pre"); out.id = "__probe";
  out.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def _png(path, w=40, h=30, colour=(200, 40, 40)):
    from PIL import Image

    Image.new("RGB", (w, h), colour).save(path)


def _fake_run(folder, cell="full", seed=0, robust=True):
    from ssl_aug.config import load_recipe

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(load_recipe("quickstart").to_dict(), default=str))
    flat = {"knn_top1": 0.75, "knn_top5": 0.99, "invariance_color_jitter": 0.72, "invariance_blur": 0.95,
            "invariance_crop_scale": 0.84}
    if robust:
        flat.update({"robustness_knn_clean": 0.75, "robustness_knn_brightness": 0.6, "robustness_knn_fog": 0.4,
                     "robustness_knn_defocus_blur": 0.3, "robustness_knn_zoom_blur": 0.5})
    (folder / "eval.json").write_text(json.dumps(flat))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps({"type": "step", "step": i, "loss": 5 - i / 10, "lr": 1e-3})
                                                     for i in range(1, 20)))
    (folder / "ablation_cell.json").write_text(json.dumps({"cell": cell, "seed": seed}))
    for name in ("views.png", "umap.png", "neighbours.png"):
        _png(folder / name)
    return folder


def _browser():
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    return None


def _render(html_path, tmp_path):
    """Load the page (plus the probe script) in headless Chromium; the probe's JSON and the console lines."""
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install -y chromium) to render the report")
    probed = tmp_path / "probed.html"
    probed.write_text(html_path.read_text().replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(match.group(1).replace("&quot;", '"')), console


def test_run_report_renders(tmp_path):
    run = _fake_run(tmp_path / "abl" / "full" / "seed0")
    out = write_report(run, compute=False)
    text = out.read_text()
    assert out == run / "report.html" and "src=\"data:image/png;base64," in text
    assert not re.search(r'(src|href)="(?!data:)', text)   # self-contained: nothing loaded from elsewhere
    for heading in ("Recipe", "Training views", "Training curves", "Evaluation", "Invariance",
                    "Corruption robustness", "Embedding map", "Nearest neighbours"):
        assert f"<h2>{heading}</h2>" in text, heading
    probe, console = _render(out, tmp_path)
    assert probe["images"] >= 5 and probe["bad"] == 0 and probe["errors"] == [] and console == []


def test_ablation_report_renders_cells_side_by_side(tmp_path):
    abl = tmp_path / "abl"
    for cell, seed in (("full", 0), ("full", 1), ("no_color", 0)):
        _fake_run(abl / cell / f"seed{seed}", cell, seed)
    (abl / "results.md").write_text("| cell | seeds | knn_top1 |\n|---|---|---|\n| full | 2 | 0.75 |\n")
    (abl / "floors.json").write_text(json.dumps({"floors": {"chance": 0.1}}))
    _png(abl / "accuracy.png")
    out = write_report(abl, tmp_path / "page.html", compute=False)
    text = out.read_text()
    assert text.count('<div class="cell">') == 2 and "Invariance and robustness" in text
    assert "2 seed(s)" in text and (abl / "invariance_robustness.md").is_file()
    probe, console = _render(out, tmp_path)
    assert probe["bad"] == 0 and probe["errors"] == [] and console == []


def test_not_a_run_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad in (tmp_path / "empty", tmp_path / "file.txt", tmp_path / "missing"):
        with pytest.raises(SslAugError, match="report: ") as err:
            write_report(bad, compute=False)
        assert "\n" not in str(err.value)
