"""The plots page a reviewer opens: `dvc plots diff` of two revisions, written with kickoff's page template
(.dvc/plots/index.html, set in .dvc/config) and drawn by a real headless Chromium with the network blocked
-- every declared plot must be drawn, with both revisions in it. And no declared plot reads a table that
holds its header alone (an empty plot in every plots diff).

Chromium comes from the distribution's packages: the `chromium` fixture installs it with apt-get where it
is missing, and skips (saying why) only where it cannot be installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, make_project, run

TEMPLATE = ROOT / ".dvc/plots/index.html"
BASE, HEAD = "plots-base", "plots-head"  # the two revisions: a tag and a branch
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# No name resolves and every request goes to a port where nothing listens: the page gets nothing from a network.
NO_NETWORK = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


def declared_plots() -> tuple[dict[str, dict], list[str]]:
    """dvc.yaml's plots: ({title: definition} of the data plots, [paths of the image plots])."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    data = {title: spec for p in plots if isinstance(p, dict) for title, spec in p.items()}
    return data, [p for p in plots if isinstance(p, str)]


def div_id(name: str) -> str:
    """The id DVC gives a plot's <div> (dvc_render.base.Renderer.remove_special_chars)."""
    return name.translate({ord(c): "_" for c in r"!@#$%^&*()[]{};,<>?\/:.|`~=_+ "})


# ---------------------------------------------------------------------------- no empty plots

def test_no_declared_plot_reads_a_header_only_table():
    data, _ = declared_plots()
    assert data
    for title, spec in data.items():
        for path, ys in spec["y"].items():
            ys = [ys] if isinstance(ys, str) else ys
            frame = pd.read_csv(ROOT / path)
            assert len(frame), f"{path} holds its header alone: '{title}' would be an empty plot in every plots diff"
            values = frame[[spec["x"], *ys]].apply(pd.to_numeric, errors="coerce")
            if spec.get("template") == "loglog":  # a log axis shows positive values only (.dvc/plots/loglog.json)
                values = values.where(values > 0)
            assert values[spec["x"]].notna().any() and values[ys].notna().any().any(), \
                f"'{title}': no row of {path} has an x and a y to draw"


def test_the_page_template_is_self_contained_and_set_in_dvc_config():
    config = (ROOT / ".dvc/config").read_text()
    assert re.search(r"^\[plots\]\n(?:.*\n)*?\s*html_template = plots/index\.html$", config, flags=re.M), config
    page = TEMPLATE.read_text(encoding="utf-8")
    assert TEMPLATE.stat().st_size < 2 * 2**20
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page  # DVC's {scripts} are its CDN tags
    markup = re.sub(r"<script>.*?</script>", "<script></script>", page, flags=re.S)  # the page less its inlined code
    assert not re.search(r"\b(?:src|href)\s*=|@import|url\(", markup), "the page template loads something from outside"
    vendored = re.findall(r"<!-- (vega(?:-lite|-embed)?)@(\S+) build/\S+\.min\.js from npm \(BSD-3-Clause\)", page)
    assert [name for name, _ in vendored] == ["vega", "vega-lite", "vega-embed"]  # the order they need each other
    notice = (ROOT / ".dvc/plots/vendor/LICENSE.md").read_text()
    for name, version in vendored:
        assert f"{name}@{version}" in notice, f"{name}@{version}: its license is not noted in .dvc/plots/vendor/LICENSE.md"


# ---------------------------------------------------------------------------- the page in a browser

def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium: found on PATH, or installed from the distribution's packages."""
    if found := find_browser():
        return found
    if not shutil.which("apt-get"):
        pytest.skip("no Chromium on PATH and no apt-get to install it (install the distribution's chromium package)")
    if os.geteuid() == 0:
        sudo = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        pytest.skip("no Chromium on PATH, and neither root nor password-less sudo to apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # stale or missing package lists: update them once and retry
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=300)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if not (found := find_browser()):
        pytest.skip(f"Chromium could not be installed: `{' '.join(install)}` exited {proc.returncode}: "
                    f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return found


def dump_dom(browser: str, page: Path, profile: Path) -> str:
    """The page's DOM after up to 10 s of (virtual) time in headless Chromium without a network."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}", *NO_NETWORK,
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, f"{browser} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


class Plots(HTMLParser):
    """Per plot <div> of the dumped page (by id): its data-kickoff-plot state, how many SVG items Vega drew
    as data marks (inside a group of class role-mark: not axes, legends or vega-embed's menu icon), its
    text (titles, axis and legend labels, image captions) and its images."""
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, ids: set[str]):
        super().__init__()
        self.ids, self.plots = ids, {}
        self.plot, self.stack = None, []  # the plot div we are in; per open element: is it inside a data mark?
        self.code = 0  # inside a <script> or <style>: not text on the page (DVC's script holds the data, rev names too)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.plot is None:
            if tag == "div" and attrs.get("id") in self.ids:
                self.plot = self.plots[attrs["id"]] = {"state": attrs.get("data-kickoff-plot"), "marks": 0,
                                                       "text": [], "images": []}
                self.stack = [False]
            return
        in_mark = self.stack[-1]
        if in_mark and tag in ("path", "circle", "rect", "line"):
            self.plot["marks"] += 1
        if tag == "img":
            self.plot["images"].append(attrs.get("src"))
        self.code += tag in ("script", "style")
        if tag not in self.VOID:
            self.stack.append(in_mark or "role-mark" in (attrs.get("class") or "").split())

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self.plot is not None and tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.plot is not None and tag not in self.VOID:
            self.code -= tag in ("script", "style")
            self.stack.pop()
            if not self.stack:
                self.plot = None

    def handle_data(self, data):
        if self.plot is not None and not self.code:
            self.plot["text"].append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots diff BASE HEAD -o DIR` in a temporary copy of the project whose two commits hold plot data:
    the project's reports/ plot tables and images on BASE, the same tables with every y value x1.25 on HEAD."""
    root = make_project(tmp_path_factory.mktemp("plots") / "kickoff", commit=False)
    shutil.copy2(ROOT / ".dvc/config", root / ".dvc/config")  # kickoff's, with plots.html_template (dvc init wrote its own)
    data, images = declared_plots()
    tables = {path: set() for spec in data.values() for path in spec["y"]}
    for spec in data.values():
        for path, ys in spec["y"].items():
            tables[path].update([ys] if isinstance(ys, str) else ys)
    for path in [*tables, *images]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, root / path)
    run("git add -A && git commit -q -m 'plot data' && git tag " + BASE, root)
    run(["git", "checkout", "-q", "-b", HEAD], root)
    for path, ys in tables.items():
        frame = pd.read_csv(root / path)
        frame[sorted(ys)] = frame[sorted(ys)].apply(pd.to_numeric, errors="coerce") * 1.25
        frame.to_csv(root / path, index=False)
    run("git commit -q -am 'plot data x1.25'", root)
    out = root.parent / "diff"
    run(["dvc", "plots", "diff", BASE, HEAD, "-o", str(out)], root)  # as .ci/pr-review: the template from .dvc/config
    return out / "index.html"


def test_the_network_is_blocked_for_the_browser(chromium, tmp_path):
    """The control: DVC's own page (Vega from a CDN) draws nothing in the same browser set-up."""
    control = tmp_path / "cdn.html"
    control.write_text('<!DOCTYPE html><html><head><script src="https://cdn.jsdelivr.net/npm/vega@5"></script></head>'
                       '<body><p id="result"></p><script>document.getElementById("result").textContent = '
                       '"vega: " + typeof vega;</script></body></html>')
    assert '<p id="result">vega: undefined</p>' in dump_dom(chromium, control, tmp_path / "profile")


def test_plots_diff_page_draws_every_plot_with_both_revisions_without_a_network(chromium, page, tmp_path):
    html = page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "vega@5" in html  # kickoff's template, not DVC's page
    data, images = declared_plots()
    ids = {div_id(title): title for title in data} | {div_id(path): path for path in images}
    parser = Plots(set(ids))
    parser.feed(dump_dom(chromium, page, tmp_path / "profile"))
    assert set(parser.plots) == set(ids), f"plots missing from the page: {sorted(set(ids) - set(parser.plots))}"
    for key, title in ids.items():
        plot = parser.plots[key]
        text = " ".join(" ".join(plot["text"]).split())
        if title in data:
            assert plot["state"] == "drawn", f"'{title}': {plot['state'] or 'never drawn'}: {text[-500:]}"
            assert plot["marks"] >= 2, f"'{title}': {plot['marks']} data marks drawn (one line per revision at least)"
            assert title in text, f"'{title}': no title on the drawn plot"
        else:  # an image plot: one picture per revision, each captioned with it
            assert len(plot["images"]) == 2 and all((page.parent / src).is_file() for src in plot["images"]), title
        for rev in (BASE, HEAD):
            assert rev in text, f"'{title}': {rev} is not in the plot (its legend, or the image captions): {text[:300]}"
