"""Vendor Vega, Vega-Lite and Vega-Embed into an HTML template so `dvc plots show/diff` work offline.

DVC's plot page loads the three libraries from a CDN (dvc_render.vega.VegaRenderer.SCRIPTS): with
no network the page is blank. This fetches the exact versions DVC names, once, from the npm
registry (`npm pack`), and writes vendor/vega/offline.html: DVC's page with the libraries inlined
and no `{scripts}` placeholder, so nothing is requested from outside. .dvc/config points
`plots.html_template` at it, so plain `dvc plots show` / `dvc plots diff` use it.

Run once after a DVC upgrade: `python scripts/vendor_vega.py` (needs npm and the registry).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / "vendor" / "vega"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def pinned_packages() -> list[tuple[str, str]]:
    """(name, version) of the CDN scripts the installed dvc_render would load."""
    from dvc_render.vega import VegaRenderer

    found = re.findall(r"cdn\.jsdelivr\.net/npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS)
    if not found:
        raise SystemExit("dvc_render.vega.VegaRenderer.SCRIPTS names no CDN package: nothing to vendor")
    return found


def fetch(name: str, version: str, work: Path) -> tuple[str, str]:
    """(minified build, licence text) of one package from its npm tarball."""
    done = subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=work,
                          capture_output=True, text=True, check=True)
    with tarfile.open(work / done.stdout.strip().splitlines()[-1]) as tar:
        script = tar.extractfile(f"package/build/{name}.min.js").read().decode("utf-8")
        licence = tar.extractfile("package/LICENSE").read().decode("utf-8")
    return script, licence


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in pinned_packages():
            script, licence = fetch(name, version, Path(tmp))
            for placeholder in ("{scripts}", "{plot_divs}", "{refresh_tag}"):
                if placeholder in script:
                    raise SystemExit(f"{name}@{version} contains {placeholder}: DVC would replace it")
            (OUT / f"LICENSE-{name}").write_text(licence, encoding="utf-8")
            safe = script.replace("</script", "<\\/script")   # never close the tag early
            blocks.append(f"    <!-- {name}@{version} (npm), licence: LICENSE-{name} -->\n"
                          f"    <script>{safe}</script>")
            print(f"vendored {name}@{version}: {len(script):,} characters")
    (OUT / "offline.html").write_text(PAGE.format(scripts="\n".join(blocks)), encoding="utf-8")
    print(f"wrote {OUT / 'offline.html'}")


if __name__ == "__main__":
    main()
