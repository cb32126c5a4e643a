"""compare: rows, ranking and best from fake evaluate outputs; md/html/json content; main()."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines import compare
from pipelines.bootstrap import metric_intervals
from pipelines.compare import build_report, rank_architectures
from pipelines.metrics import classification_metrics, majority_baseline, subgroup_metrics

CLASSES = ["melanoma", "nevus", "basal cell carcinoma | bcc"]  # a pipe must not break md tables
N_TEST = 60
# A 1x1 PNG: the report only copies and inlines plots, it never decodes them.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _probs(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Random scores that favour the true class more as skill grows."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(y.size, len(CLASSES)))
    logits[np.arange(y.size), y] += skill
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _doc(
    arch: str, skill: float, seed: int, params: int, y: np.ndarray, frame: pd.DataFrame
) -> dict[str, Any]:
    p = _probs(y, skill, seed)
    y_val = np.roll(y, 7)
    test = classification_metrics(y, p, CLASSES, top_k=2)
    test["ci95"] = metric_intervals(y, p, np.arange(N_TEST) // 2, CLASSES, n_resamples=50, seed=0)
    train = np.array([1] * 30 + [0] * 10 + [2] * 5)
    return {
        "arch": arch,
        "dataset": "ham10000",
        "builder": "custom_cnn",
        "val": classification_metrics(y_val, _probs(y_val, skill, seed + 100), CLASSES, top_k=2),
        "val_baseline": majority_baseline(train, y_val, 3, CLASSES),
        "test": test,
        "baseline": majority_baseline(train, y, 3, CLASSES),
        "subgroups": subgroup_metrics(frame, y, p, CLASSES, min_size=10),
        "profile": {"params": params, "flops": params * 2100, "size_mb": params * 4 / 1e6,
                    "latency_ms_p50": 1.5, "latency_ms_p95": 2.5, "throughput_ips": 900.0},
        "training": {"train_seconds": 75.2, "epochs_run": 12, "best_epoch": 9, "image_size": 64,
                     "run_id": f"run-{arch}"},
    }


@pytest.fixture()
def project(tmp_path: Path) -> tuple[dict[str, dict], Path]:
    rng = np.random.default_rng(42)
    y = rng.integers(0, 3, N_TEST)
    frame = pd.DataFrame(
        {"sex": ["male"] * 35 + ["female"] * 20 + [None] * 5, "age": rng.integers(18, 90, N_TEST)}
    )
    docs = {
        "cnn_small": _doc("cnn_small", 0.5, 1, 20_000, y, frame),
        "cnn_medium": _doc("cnn_medium", 3.0, 2, 60_000, y, frame),
        "mobilenetv2_attention": _doc("mobilenetv2_attention", 1.5, 3, 700_000, y, frame),
    }
    plots = tmp_path / "plots"
    for arch in docs:
        (plots / arch).mkdir(parents=True)
        for name, _ in compare.PLOTS:
            if not (arch == "cnn_small" and name == "gradcam.png"):  # one missing plot
                (plots / arch / name).write_bytes(PNG)
    return docs, plots


def _expected_order(docs: dict[str, dict]) -> list[str]:
    return sorted(docs, key=lambda a: -docs[a]["val"]["balanced_accuracy"])  # validation chooses


def test_json_rows_ranking_and_best(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    out = tmp_path / "reports" / "compare"
    result = build_report(docs, plots, out, "balanced_accuracy")
    on_disk = json.loads((out / "compare.json").read_text())
    assert on_disk == result
    order = _expected_order(docs)
    assert order[0] == "cnn_medium"  # the most skilful fake model
    assert result["ranking"] == order  # arch names, best first
    assert [r["arch"] for r in result["ranking_detail"]] == order
    assert [r["rank"] for r in result["ranking_detail"]] == [1, 2, 3]
    assert [r["rank"] for r in sorted(result["rows"], key=lambda r: order.index(r["arch"]))] == [1, 2, 3]
    values = [r["value"] for r in result["ranking_detail"]]
    assert values == sorted(values, reverse=True)
    assert values == [docs[a]["val"]["balanced_accuracy"] for a in order]
    assert [r["test_value"] for r in result["ranking_detail"]] == [docs[a]["test"]["balanced_accuracy"]
                                                                  for a in order]
    assert result["rank_split"] == "val" and result["report_split"] == "test" and result["skipped"] == {}
    assert result["best"] == "cnn_medium" and result["rank_metric"] == "balanced_accuracy"
    rows = {r["arch"]: r for r in result["rows"]}
    assert set(rows) == set(docs)
    medium = rows["cnn_medium"]
    test = docs["cnn_medium"]["test"]
    for key in ("accuracy", "balanced_accuracy", "precision_macro", "precision_weighted", "recall_macro",
                "recall_weighted", "f1_macro", "f1_weighted", "mcc", "roc_auc_macro_ovr", "ece"):
        assert medium[key] == test[key]
    assert medium["top_k_accuracy"] == test["top_2_accuracy"] and medium["top_k"] == 2
    assert medium["val"]["balanced_accuracy"] == docs["cnn_medium"]["val"]["balanced_accuracy"]
    assert medium["ci95"]["balanced_accuracy"] == test["ci95"]["balanced_accuracy"]
    assert medium["ci95"]["top_k_accuracy"] == test["ci95"]["top_2_accuracy"]
    assert medium["params"] == 60_000 and medium["latency_ms_p95"] == 2.5 and medium["epochs_run"] == 12
    assert medium["builder"] == "custom_cnn" and medium["run_id"] == "run-cnn_medium"
    assert result["baseline"]["arch"] == "majority_baseline"
    assert result["baseline"]["majority_class"] == "nevus"
    assert result["baseline"]["accuracy"] == docs["cnn_small"]["baseline"]["accuracy"]
    assert result["dataset"] == "ham10000" and result["test_n"] == N_TEST
    assert result["plots"]["cnn_small"]["gradcam"] is None
    assert result["plots"]["cnn_medium"]["roc"] == "img/cnn_medium/roc.png"
    assert (out / "img" / "cnn_medium" / "roc.png").read_bytes() == PNG
    assert any("cnn_small/gradcam.png" in w for w in result["warnings"])


def test_markdown_content(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    out = tmp_path / "cmp"
    build_report(docs, plots, out, "balanced_accuracy", split_sizes={"train": 280, "val": 60, "test": 60})
    md = (out / "compare.md").read_text()
    assert "ham10000" in md and "held-out test split" in md
    assert "train 280, val 60, test 60 images" in md
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    table = [line for line in summary.splitlines() if line.startswith("|")]
    header, body = table[0], table[2:]
    assert "Balanced acc. ★" in header and "Top-2 acc." in header and "Latency p95" in header
    assert len(body) == 4  # three archs and the baseline row
    assert [line.split("|")[2].strip() for line in body[:3]] == _expected_order(docs)
    assert body[3].split("|")[2].strip() == "majority baseline (nevus)"
    ba = docs["cnn_medium"]["test"]["balanced_accuracy"]
    assert f"**{ba:.3f}**" in body[0]  # best value per metric in bold
    assert "60,000" in body[0] and "1 min 15 s" in body[0] and "12 (best 9)" in body[0]
    assert all(line.count("|") == header.count("|") for line in body)  # the pipe was escaped
    assert "**Best: `cnn_medium`**" in md
    assert "basal cell carcinoma \\| bcc" in md  # per-class table, escaped
    assert "### cnn_small: subgroups" in md and "**sex**" in md and "**age_band**" in md
    assert "| unknown | 5 | n too small |" in md
    assert "![ROC curves](img/cnn_medium/roc.png)" in md
    assert "**Grad-CAM**\n\n_not produced_" in md


def test_html_is_self_contained(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    out = tmp_path / "cmp"
    build_report(docs, plots, out, "balanced_accuracy")
    page = (out / "compare.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 3 * 5 - 1 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == PNG
    assert "<link" not in page and "<script" not in page
    for arch in docs:
        assert f"<td>{arch}</td>" in page
    assert "held-out test split" in page and "<code>ham10000</code>" in page
    assert "basal cell carcinoma | bcc" in page and 'class="baseline"' in page
    assert page.count("<table>") >= 1 + 1 + 3 + 3 * 2  # summary, overview, per-class, subgroups


def test_lower_is_better_metric_and_missing_values(project: tuple[dict[str, dict], Path]) -> None:
    docs, _ = project
    ranking = rank_architectures(docs, "ece")
    eces = [r["value"] for r in ranking]
    assert eces == sorted(eces)
    docs["cnn_medium"]["val"]["roc_auc_macro_ovr"] = None
    ranking = rank_architectures(docs, "roc_auc_macro_ovr")
    assert ranking[-1]["arch"] == "cnn_medium" and ranking[-1]["value"] is None
    assert all(r["beats_baseline"] is not None for r in ranking[:-1])


def test_ties_go_to_the_smaller_model(project: tuple[dict[str, dict], Path]) -> None:
    docs, _ = project
    for doc in docs.values():
        doc["val"]["balanced_accuracy"] = 0.5
    assert [r["arch"] for r in rank_architectures(docs, "balanced_accuracy")] == [
        "cnn_small", "cnn_medium", "mobilenetv2_attention",
    ]


def test_model_below_baseline_is_flagged(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    docs["cnn_small"]["val"]["mcc"] = -0.2  # the majority baseline's MCC is 0
    result = build_report(docs, plots, tmp_path / "c", "mcc")
    small = next(r for r in result["ranking_detail"] if r["arch"] == "cnn_small")
    assert small["beats_baseline"] is False and result["ranking"][-1] == "cnn_small"
    assert any("Not better than the majority baseline" in w and "cnn_small" in w for w in result["warnings"])


def test_unknown_rank_metric_fails_loudly(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    with pytest.raises(ValueError, match="balanced_acc"):
        build_report(docs, plots, tmp_path / "c", "balanced_acc")


def test_stale_images_are_removed(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    out = tmp_path / "c"
    build_report(docs, plots, out, "balanced_accuracy")
    del docs["mobilenetv2_attention"]
    result = build_report(docs, plots, out, "balanced_accuracy")
    assert not (out / "img" / "mobilenetv2_attention").exists()
    assert len(result["rows"]) == 2


def test_main_reads_params_and_writes_reports(
    project: tuple[dict[str, dict], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, _ = project  # plots live in tmp_path/plots, i.e. <root>/plots/<arch>
    root = tmp_path
    archs = ["cnn_small", "cnn_medium"]
    (root / "params.yaml").write_text(
        yaml.safe_dump({"architectures": archs, "promote": {"metric": "f1_macro"}})
    )
    (root / "reports" / "evaluate").mkdir(parents=True)
    for arch in archs:
        docs[arch]["training"]["split_sizes"] = {"train": 280, "val": 60, "test": N_TEST}
        (root / "reports" / "evaluate" / f"{arch}.json").write_text(json.dumps(docs[arch]))
    monkeypatch.setenv("MEDSCAN_ROOT", str(root))
    compare.main()
    out = root / "reports" / "compare"
    result = json.loads((out / "compare.json").read_text())
    assert [r["arch"] for r in result["rows"]] == archs
    assert result["rank_metric"] == "f1_macro"
    best = max(archs, key=lambda a: docs[a]["val"]["f1_macro"])
    assert result["best"] == best
    assert result["split_sizes"] == {"train": 280, "val": 60, "test": N_TEST}
    assert "train 280, val 60, test 60 images" in (out / "compare.md").read_text()
    assert (out / "compare.md").exists() and (out / "compare.html").exists()
    assert "mobilenetv2_attention" not in (out / "compare.md").read_text()


def test_main_names_the_missing_metrics_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"architectures": ["x"], "promote": {"metric": "mcc"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MEDSCAN_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="x.json"):
        compare.main()


def test_validation_chooses_even_when_test_disagrees(project: tuple[dict[str, dict], Path],
                                                     tmp_path: Path) -> None:
    docs, plots = project
    docs["cnn_small"]["val"]["balanced_accuracy"] = 0.99  # best on validation, worst on test
    assert docs["cnn_small"]["test"]["balanced_accuracy"] < docs["cnn_medium"]["test"]["balanced_accuracy"]
    result = build_report(docs, plots, tmp_path / "c", "balanced_accuracy")
    assert result["best"] == "cnn_small" and result["ranking"][0] == "cnn_small"
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "Validation chose, test only reports" in md
    selection = md.split("## Selection: validation chooses, test reports", 1)[1].split("\n## ", 1)[0]
    table = [line for line in selection.splitlines() if line.startswith("|")]
    assert "Val balanced_accuracy (selects)" in table[0] and "Test balanced_accuracy [95% CI]" in table[0]
    first = [c.strip() for c in table[2].split("|")]
    assert first[2] == "cnn_small" and first[3] == "**0.990**"
    lo, hi = docs["cnn_small"]["test"]["ci95"]["balanced_accuracy"]
    assert f"{docs['cnn_small']['test']['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" == first[4]
    assert "Sensitivity 95% CI" in md


def test_an_arch_without_validation_metrics_is_never_chosen(project: tuple[dict[str, dict], Path],
                                                            tmp_path: Path) -> None:
    docs, plots = project
    del docs["cnn_medium"]["val"]  # best on test, but nothing chose it
    result = build_report(docs, plots, tmp_path / "c", "balanced_accuracy")
    assert result["ranking"][-1] == "cnn_medium" and result["best"] != "cnn_medium"
    assert any("No validation metrics" in w and "cnn_medium" in w for w in result["warnings"])


def test_skipped_candidates_are_listed_not_ranked(
    project: tuple[dict[str, dict], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, _ = project
    root = tmp_path
    archs = ["cnn_small", "warm_start", "cnn_medium"]
    (root / "params.yaml").write_text(yaml.safe_dump({"architectures": archs,
                                                      "promote": {"metric": "balanced_accuracy"}}))
    (root / "reports" / "evaluate").mkdir(parents=True)
    for arch in ("cnn_small", "cnn_medium"):
        (root / "reports" / "evaluate" / f"{arch}.json").write_text(json.dumps(docs[arch]))
    (root / "reports" / "evaluate" / "warm_start.json").write_text(
        json.dumps({"skipped": "no champion to warm-start from", "arch": "warm_start"}))
    monkeypatch.setenv("MEDSCAN_ROOT", str(root))
    compare.main()
    out = root / "reports" / "compare"
    result = json.loads((out / "compare.json").read_text())
    assert result["skipped"] == {"warm_start": "no champion to warm-start from"}
    assert "warm_start" not in result["ranking"] and [r["arch"] for r in result["rows"]] == ["cnn_small",
                                                                                          "cnn_medium"]
    assert result["best"] == "cnn_medium"
    md = (out / "compare.md").read_text()
    assert "**Skipped candidates**" in md and "`warm_start`: no champion to warm-start from" in md
    with pytest.raises(ValueError, match="every candidate was skipped"):
        build_report({"warm_start": {"skipped": "x", "arch": "warm_start"}}, root / "plots", out,
                     "balanced_accuracy")


def _calibrated(docs: dict[str, dict]) -> dict[str, dict]:
    docs["cnn_medium"]["calibration"] = {
        "target_precision": 0.9, "rule": "r", "note": None, "temperature": 1.37, "threshold": 0.62,
        "val_coverage": 0.71, "val_accepted_accuracy": 0.91, "test_coverage": 0.68,
        "test_accepted_accuracy": 0.9, "test_accepted": 41, "test_n": 60, "reachable": True}
    return docs


def test_compute_then_render(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    """Computing writes no page; rendering the same Report writes what build_report writes."""
    docs, plots = project
    report = compare.compute_report(docs, plots, tmp_path / "a", "balanced_accuracy")
    assert not (tmp_path / "a" / "compare.html").exists() and not (tmp_path / "a" / "compare.md").exists()
    compare.write_report(report, tmp_path / "a")
    build_report(docs, plots, tmp_path / "b", "balanced_accuracy")
    for name in ("compare.md", "compare.json", "compare.html"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name


def test_html_summary_reads_quality_first(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    build_report(docs, plots, tmp_path, "balanced_accuracy")
    page = (tmp_path / "compare.html").read_text()
    summary = page.split('id="summary"', 1)[1].split("</table>", 1)[0]
    headers = re.findall(r"<th>([^<]*)</th>", summary)
    assert headers[:4] == ["Rank", "Architecture", "Accuracy", "Balanced acc. ★"]
    assert headers.index("Params") > headers.index("ECE (lower is better)")
    assert "Test-split metrics" in summary
    # Many-panel plots span the page; the Markdown keeps its column order (cost first).
    assert page.count('<figure class="wide">') == 3 * len(compare.WIDE_PLOTS)
    md_header = next(line for line in (tmp_path / "compare.md").read_text().split("## Summary", 1)[1]
                     .splitlines() if line.startswith("| Rank"))
    assert md_header.index("Params") < md_header.index("Accuracy")


def test_calibration_is_shown_when_present(project: tuple[dict[str, dict], Path], tmp_path: Path) -> None:
    docs, plots = project
    build_report(docs, plots, tmp_path / "plain", "balanced_accuracy")
    assert "Calibration and abstention" not in (tmp_path / "plain" / "compare.md").read_text()
    build_report(_calibrated(docs), plots, tmp_path / "cal", "balanced_accuracy")
    md = (tmp_path / "cal" / "compare.md").read_text()
    section = md.split("## Calibration and abstention", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| cnn_medium"))
    assert "| 1.370 | 0.620 | 0.900 | 0.710 | 0.910 | 0.680 | 0.900 |" in row
    assert "cnn_small" not in section  # only calibrated archs get a row
    assert "<th>Test accepted acc.</th>" in (tmp_path / "cal" / "compare.html").read_text()


def test_html_renders_in_a_browser_with_the_network_blocked(project: tuple[dict[str, dict], Path],
                                                            tmp_path: Path) -> None:
    from browser import offline_browser, open_offline

    docs, plots = project
    build_report(_calibrated(docs), plots, tmp_path, "balanced_accuracy")
    with offline_browser() as browser:
        page = open_offline(browser, tmp_path / "compare.html")
        assert page.blocked == [] and page.errors == [] and page.failed == []
        # The template's style sheet applied, the plots decoded, the tables filled.
        assert page.eval("() => getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse"
        assert page.eval("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert page.eval("() => document.images.length") == 3 * 5 - 1
        wide = page.eval("() => document.querySelector('figure.wide').getBoundingClientRect().width")
        narrow = page.eval("() => document.querySelector('figure:not(.wide)').getBoundingClientRect().width")
        assert wide > 1.8 * narrow  # learning curves / ROC / Grad-CAM span the page
        assert page.eval("() => document.querySelectorAll('tbody tr').length") > 20
        text = page.eval("() => document.body.innerText")
        assert "Calibration and abstention" in text and "majority baseline (nevus)" in text
