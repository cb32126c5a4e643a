"""What `make demo` prints at the end: where to look, who is champion, and the headline numbers."""
from __future__ import annotations

import json

from pipelines.config import Paths, load_params, project_root


def summary(paths: Paths) -> str:
    promotion = json.loads(paths.promotion.read_text(encoding="utf-8"))
    compare = json.loads((paths.compare_dir / "compare.json").read_text(encoding="utf-8"))
    split = json.loads(paths.split_report.read_text(encoding="utf-8"))
    metric = promotion["metric"]
    lines = [
        "",
        "Medscan pipeline finished.",
        f"  data: {split['sizes']} images (train/val/test), {split['overlapping_groups']} groups on two sides",
        f"  registered model: {promotion['model_name']} version {promotion['candidate_version']} "
        f"({promotion['candidate_arch']}), {'BLESSED' if promotion['blessed'] else 'not blessed'}: "
        f"{promotion['reason']}",
        f"  champion alias -> version {promotion['champion_after']}  "
        f"(load: models:/{promotion['model_name']}@champion)",
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
        f"  comparison report: {paths.compare_dir / 'compare.html'}",
        f"  data validation:   {paths.data_docs} (Great Expectations Data Docs), quarantine: {paths.quarantine}",
        f"  MLflow UI:         make mlflow-ui   (or: .venv/bin/mlflow ui --backend-store-uri sqlite:///{paths.mlflow_db})",
        f"  predict:           .venv/bin/python -m pipelines.serve IMAGE.jpg   (top-5 from the champion)",
        f"  ranked by {metric}; rollback: .venv/bin/python -m pipelines.registry rollback",
    ]
    return "\n".join(lines)


def main() -> None:
    root = project_root()
    load_params(root)
    print(summary(Paths(root)))


if __name__ == "__main__":
    main()
