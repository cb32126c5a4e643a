"""What `make demo` prints at the end: where to look, who is champion, and the headline numbers.

With its defaults the demo always ends with a champion. When a user's settings (fewer images or
epochs, a higher floor) leave no version holding the alias, the summary says so first, with the
promotion's own reason (reports/promotion.json: `reason`, the failed `checks`) and the settings
that decided it, instead of a bare "version None".
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from pipelines.config import COMPARE_HTML, Paths, load_params, project_root


def _setting(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def champion_lines(promotion: Mapping[str, Any]) -> list[str]:
    """The registered candidate, its verdict, and who holds the champion alias now."""
    name = promotion["model_name"]
    after, candidate = promotion.get("champion_after"), promotion.get("candidate_version")
    verdict = "BLESSED" if promotion["blessed"] else "not blessed"
    lines = [f"  registered model: {name} version {candidate} ({promotion['candidate_arch']}), "
             f"{verdict}: {promotion['reason']}"]
    if after is None:
        lines.append("  champion alias -> none (see NO CHAMPION below)")
    else:
        kept = "" if promotion["blessed"] else f" (unchanged: version {candidate} was not blessed)"
        lines.append(f"  champion alias -> version {after}{kept}  (load: models:/{name}@champion)")
    return lines


def no_champion_lines(promotion: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> list[str]:
    """Nothing when a version holds the alias; else why not: the gate's reason and the settings."""
    if promotion.get("champion_after") is not None:
        return []
    params = params or {}
    metric = promotion["metric"]
    failed = [c for c in promotion.get("checks") or [] if not c.get("passed")]
    lines = [
        "  NO CHAMPION: no registered version holds the `champion` alias, so serving has no model.",
        f"    why: {'; '.join(c['detail'] for c in failed) if failed else promotion['reason']}",
        f"    the best candidate, {promotion['candidate_arch']}, scored test {metric} "
        f"{_score(promotion.get('candidate_score'))} (validation {_score(promotion.get('candidate_val_score'))}); "
        f"a first champion must reach promote.floor {promotion.get('floor')}",
    ]
    knobs = ["train.epochs", "train.image_size", "promote.floor"]
    demo_out = str(_setting(params, "demo.out") or "data/demo")
    if str(_setting(params, "dataset.root") or "").startswith(demo_out):
        knobs.insert(0, "demo.images_per_class")
    settings = ", ".join(f"{k} {_setting(params, k)}" for k in knobs if _setting(params, k) is not None)
    lines += [
        f"    your settings: {settings}",
        "    more images per class or more epochs, or a lower promote.floor, give a champion; the "
        "demo defaults (params.yaml as committed; `git diff params.yaml` shows your changes) give one",
    ]
    return lines


def summary(paths: Paths, params: Mapping[str, Any] | None = None) -> str:
    promotion = json.loads(paths.promotion.read_text(encoding="utf-8"))
    compare = json.loads(paths.compare_json.read_text(encoding="utf-8"))
    split = json.loads(paths.split_report.read_text(encoding="utf-8"))
    metric = promotion["metric"]
    lines = [
        "",
        "Medscan pipeline finished.",
        f"  data: {split['sizes']} images (train/val/test), {split['overlapping_groups']} groups on two sides",
        *champion_lines(promotion),
        "  test-split metrics per architecture:",
    ]
    for arch in compare["ranking"]:
        test = json.loads(paths.eval_report(arch).read_text(encoding="utf-8"))["test"]
        lines.append(f"    {arch:<24} accuracy {test['accuracy']:.3f}  balanced accuracy "
                     f"{test['balanced_accuracy']:.3f}  macro F1 {test['f1_macro']:.3f}  "
                     f"macro ROC-AUC {test['roc_auc_macro_ovr'] or float('nan'):.3f}")
    baseline = json.loads(paths.eval_report(compare["ranking"][0]).read_text(encoding="utf-8"))["baseline"]
    lines += [
        f"    {'majority-class baseline':<24} accuracy {baseline['accuracy']:.3f}  balanced accuracy "
        f"{baseline['balanced_accuracy']:.3f}",
        f"  comparison report: {paths.compare_dir / COMPARE_HTML}",
        f"  data validation:   {paths.data_docs} (Great Expectations Data Docs), quarantine: {paths.quarantine}",
        f"  MLflow UI:         make mlflow-ui   (or: .venv/bin/mlflow ui --backend-store-uri sqlite:///{paths.mlflow_db})",
        f"  predict:           .venv/bin/python -m pipelines.serve IMAGE.jpg   (top-5 from the champion)",
        f"  ranked by {metric}; rollback: .venv/bin/python -m pipelines.registry rollback",
        *no_champion_lines(promotion, params),
    ]
    return "\n".join(lines)


def main() -> None:
    """Print the summary; exit 1 when no champion came out (`make demo` then fails, saying why)."""
    root = project_root()
    params = load_params(root)
    paths = Paths(root)
    print(summary(paths, params))
    promotion = json.loads(paths.promotion.read_text(encoding="utf-8"))
    if promotion.get("champion_after") is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
