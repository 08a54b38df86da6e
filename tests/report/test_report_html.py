"""report.html: one self-contained page whose figures are embedded, drawn from the report."""

from __future__ import annotations

import base64
import copy
import io
import re
from html.parser import HTMLParser

import pytest

from kd_compile.report import render_html
from kd_compile.report.plots import figures, front_2d


class _Page(HTMLParser):
    """Collect the tags of a page, and check it nests (every opened element closed in order)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    return p


def test_report_html_is_self_contained_with_its_figures(compiled):
    out, r = compiled
    path = out / "report.html"
    text = path.read_text(encoding="utf-8")
    page = _parse(text)
    assert not page.errors and not page.stack
    imgs = [a for t, a in page.tags if t == "img"]
    expected = [p.key for p in figures(r)]
    # accuracy/latency, search trace, per-layer latency, predicted vs measured (this CPU)
    assert expected == ["accuracy_latency", "search_trace", "layers", "predicted_measured"]
    assert len(imgs) == len(expected)
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,") and a["alt"]
        png = base64.b64decode(a["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 400_000
        from PIL import Image

        w, h = Image.open(io.BytesIO(png)).size
        assert w >= 400 and h >= 200
    # nothing fetched from elsewhere: no scripts, stylesheets or remote sources
    assert not [t for t, a in page.tags if t in ("script", "link", "iframe")]
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert 20_000 < path.stat().st_size < 2_000_000
    assert "report.html" in r["artifacts"] or (out / "report.html").is_file()


def test_report_html_says_what_the_numbers_are(compiled):
    out, r = compiled
    text = (out / "report.html").read_text(encoding="utf-8")
    sp = r["speedup"]["target"]
    assert ("faster" if sp >= 1 else "slower") in text
    assert "95% CI" in text and "percentage points" in text
    assert "trtexec --onnx=student.onnx --saveEngine=" in text and "onnxruntime" in text
    assert "student.torchscript.pt" in text and "student.pt2" in text
    assert f"{r['run']['data']['val']:,}" in text


def test_figures_skip_what_the_report_does_not_have(compiled):
    _, r = compiled
    bare = copy.deepcopy(r)
    bare["measurements"] = {}
    bare["student"].pop("layers")
    keys = [p.key for p in figures(bare)]
    assert keys == ["accuracy_latency", "search_trace"]
    page = _parse(render_html(bare))
    assert len([t for t, _ in page.tags if t == "img"]) == 2 and not page.errors


def test_front_2d_keeps_only_undominated_points():
    pts = [(1.0, 50.0), (2.0, 40.0), (2.0, 60.0), (3.0, 55.0), (4.0, 70.0)]
    assert front_2d(pts) == [(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]


def test_an_export_left_out_is_a_warning_in_both_reports(compiled):
    from kd_compile.report import render_markdown

    _, r = compiled
    bad = copy.deepcopy(r)
    bad["exports"]["student.pt2"] = {"status": "failed", "error": ".pt2 export failed: Unsupported: data-dependent"}
    bad["artifacts"].pop("student.pt2", None)
    bad["warnings"] = ["student.pt2 was not written: .pt2 export failed: Unsupported: data-dependent"]
    md, page = render_markdown(bad), render_html(bad)
    assert "Warning: student.pt2 was not written" in md
    assert "student.pt2 was not written" in page and "not written</span>" in page
    assert not _parse(page).errors


def _browser() -> str | None:
    import shutil

    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium on this machine")
def test_report_html_renders_in_a_headless_browser(compiled, tmp_path):
    """A screenshot of the page: the figures are drawn (the page is tall, and its figure region
    is not blank)."""
    import subprocess

    from PIL import Image, ImageStat

    out, _ = compiled
    shot = tmp_path / "shot.png"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,4000",
           f"--screenshot={shot}", (out / "report.html").as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file()
    im = Image.open(shot).convert("L")
    assert im.size == (1200, 4000)
    # the first figure sits below the summary; its band of the page has drawn content (lines, markers)
    band = im.crop((0, 800, 1200, 1400))
    assert ImageStat.Stat(band).stddev[0] > 20
