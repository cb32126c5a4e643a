"""Make a built Great Expectations Data Docs site render with no network.

GE 1.24 pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from CDNs, a logo
from S3 (with a timestamp, so it is never cached) and show a newsletter link: offline the index is
unstyled and its tables stay empty, because bootstrap-table fills them from JavaScript. The same
files, vendored under `pipelines/vendor/datadocs` (see its README for where each came from), are
copied into the site and every page is pointed at them with a relative path, so the site can be
opened from disk, archived or moved as one folder. A remote asset this module does not know (a new
GE version) is a clear error rather than a page that silently breaks offline.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent / "vendor" / "datadocs"
SITE_VENDOR = Path("static") / "vendor"   # where the copy lives inside a site
GE_LOGO = Path("static") / "images" / "logo-long.png"  # GE ships this one in every site

# Each CDN URL GE 1.24 writes, and the vendored file that replaces it.
ASSETS: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/4.3.1/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/4.3.1/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/3.7.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/1.12.9/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/1.19.1/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/1.19.1/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/1.19.1/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table/1.19.1/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table/1.19.1/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/1.9.0/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/1.9.0/bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "bootstrap-dark/1.1.0/bootstrap-prefers-dark.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/6.6.0/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/vega-5.33.1.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega/vega-lite-5.23.0.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega/vega-embed-6.29.0.min.js",
}

# The navbar logo (an <img>, and a CSS background in dark mode): GE's own local copy serves both.
_LOGO = re.compile(r"https://great-expectations-web-assets\.s3[^\"')]*?/(?:logo-long|full_logo_dark)\.png(?:\?[^\"')]*)?")
_NEWSLETTER = re.compile(r"<footer>\s*<p>[^<]*newsletter.*?</footer>", re.S | re.I)
# Subresource integrity and CORS mode make sense for a CDN; on file:// the crossorigin fetch fails.
_SRI = re.compile(r"\s+(integrity|crossorigin)=\"[^\"]*\"")
_LOADED = re.compile(r"<(?:script|link|img)\b[^>]*?\b(?:src|href)=[\"']((?:https?:)?//[^\"']+)[\"']"
                     r"|url\(\s*[\"']?((?:https?:)?//[^\"')]+)", re.I)


def remote_assets(html: str) -> list[str]:
    """URLs a page would fetch from the network (scripts, style sheets, images, CSS url(); not links)."""
    return [tag or css for tag, css in _LOADED.findall(html)]


def _relative(target: Path, page: Path, site: Path) -> str:
    return Path(os.path.relpath(site / target, page.parent)).as_posix()


def offline_page(html: str, page: Path, site: Path) -> str:
    """One page rewritten to the site's local copies, with the logo local and no newsletter footer."""
    for url, local in ASSETS.items():
        if url in html:
            html = html.replace(f'"{url}"', f'"{_relative(SITE_VENDOR / local, page, site)}"')
    html = _LOGO.sub(_relative(GE_LOGO, page, site), html)
    html = _NEWSLETTER.sub("", html)
    return _SRI.sub("", html)


def _pages(site: Path) -> Iterable[Path]:
    return sorted(p for p in site.rglob("*.html") if SITE_VENDOR not in p.relative_to(site).parents)


def make_offline(site: Path) -> list[Path]:
    """Vendor the assets into `site` and rewrite every page; returns the pages rewritten.

    Raises RuntimeError naming the page and URL when a page still loads something remote, so a GE
    upgrade that adds a CDN asset fails the validate stage instead of shipping a broken site.
    """
    site = Path(site).resolve()
    shutil.copytree(VENDOR_DIR, site / SITE_VENDOR, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("README.md"))
    pages = list(_pages(site))
    left: list[str] = []
    for page in pages:
        html = offline_page(page.read_text(encoding="utf-8"), page, site)
        page.write_text(html, encoding="utf-8")
        left += [f"{page.relative_to(site)}: {url}" for url in remote_assets(html)]
    if left:
        raise RuntimeError("Data Docs still load remote assets (add them to pipelines.datadocs.ASSETS "
                           "and vendor them):\n  " + "\n  ".join(sorted(set(left))))
    return pages
