"""Write .dvc/plots/index.html: the page template of `dvc plots show/diff` (.dvc/config:
plots.html_template), with Vega, Vega-Lite and vega-embed inlined so the page draws without a network.

DVC's own page loads those three libraries from a CDN (its `{scripts}` placeholder); this template leaves
that placeholder out and carries the minified builds of the versions below, unchanged, from the npm
registry. To update: change VERSIONS, run `python .dvc/plots/vendor/build_page.py` (needs `npm`), update
the versions in .dvc/plots/vendor/LICENSE.md, and run `pytest tests/test_plots_page.py`.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "index.html"
# (package, version, the minified browser build inside its npm tarball); vega-embed 6 is the last
# major with a UMD build that uses the `vega` and `vegaLite` globals; it wants vega 5.
VERSIONS = (("vega", "5.33.1", "build/vega.min.js"),
            ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
            ("vega-embed", "6.29.0", "build/vega-embed.min.js"))
LICENSE = "BSD-3-Clause"
MAX_BYTES = 2 * 2**20  # every tracked file stays under 2 MiB

# DVC fills {refresh_tag} and {plot_divs} (dvc_render/html.py); it would also fill a scripts
# placeholder with its CDN tags, which is why this page has none.
HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>kickoff: DVC plots</title>
    <!-- kickoff's template (.dvc/plots/vendor/build_page.py): Vega, Vega-Lite and vega-embed are inlined
         below (licenses: .dvc/plots/vendor/LICENSE.md), so this page needs no network. -->
"""
# DVC's page calls vegaEmbed('#id', spec) once per plot. The wrapper draws SVG (its text can be searched
# and selected, and a headless browser's DOM shows what was drawn), marks each plot drawn or failed,
# and writes the error into the page where a plot cannot be drawn.
WRAPPER = """    <script>
    (function () {
        var embed = window.vegaEmbed;
        window.vegaEmbed = Object.assign(function (el, spec, options) {
            var target = typeof el === "string" ? document.querySelector(el) : el;
            return embed(el, spec, Object.assign({renderer: "svg"}, options)).then(function (result) {
                target.setAttribute("data-kickoff-plot", "drawn");
                return result;
            }, function (error) {
                target.setAttribute("data-kickoff-plot", "failed");
                var note = document.createElement("pre");
                note.textContent = "This plot could not be drawn: " + error;
                target.appendChild(note);
                throw error;
            });
        }, embed);
    })();
    </script>
"""
TAIL = """    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def script(name: str, version: str, member: str, text: str) -> str:
    for bad in ("</script", "<!--", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        if bad.lower() in text.lower():
            sys.exit(f"{name}@{version}: holds {bad!r}, which cannot be inlined in the template as is")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return (f"    <!-- {name}@{version} {member} from npm ({LICENSE}), sha256 {digest} -->\n"
            f"    <script>{text}</script>\n")


def main() -> None:
    parts = [HEAD]
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, member in VERSIONS:
            packed = json.loads(subprocess.run(["npm", "pack", "--json", f"{name}@{version}"], cwd=tmp, check=True,
                                               capture_output=True, text=True).stdout)[0]
            with tarfile.open(Path(tmp) / packed["filename"]) as tar:
                meta = json.load(tar.extractfile("package/package.json"))
                text = tar.extractfile(f"package/{member}").read().decode("utf-8")
            if meta["license"] != LICENSE:
                sys.exit(f"{name}@{version}: license {meta['license']}, not {LICENSE}: check it before vendoring")
            parts.append(script(name, version, member, text.rstrip("\n")))
            print(f"{name}@{version}: {member}, {len(text.encode()) / 1024:.0f} KiB, npm integrity {packed['integrity']}")
    page = "".join(parts) + WRAPPER + TAIL
    if len(page.encode()) >= MAX_BYTES:
        sys.exit(f"{PAGE}: {len(page.encode())} bytes, over the 2 MiB limit")
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE} ({len(page.encode()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
