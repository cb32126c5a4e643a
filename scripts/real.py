"""Train a recommended real-data configuration in this checkout and end with a champion.

    python scripts/real.py malaria --data ../shared/data/malaria        (what `make real` runs)
    python scripts/real.py dermnet --data ../shared/data/dermnet --set train.epochs=1 --dry-run

configs/<dataset>.yaml holds the recommended params.yaml overrides. They are applied with
`dvc exp run -S key=value ...` rather than by rewriting params.yaml and calling `dvc repro`:
DVC edits params.yaml in place (comments kept), records the run as a named experiment
(`dvc exp show` puts configurations side by side; `dvc exp apply` / `git checkout params.yaml`
go back), and the stage graph, caching and the MLflow registry work exactly as in `make demo`.
The overrides are validated against the project's own parsers before anything runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "configs"
DATASETS = ("ham10000", "malaria", "dermnet")
# Every real run: the demo_data stage still runs in the graph; keep its synthetic set negligible.
# Registration is asked for: promote leaves the registry alone inside other `dvc exp run`s.
RUN_DEFAULTS: dict[str, Any] = {"demo.images_per_class": 5, "promote.register_experiments": True}


def load_config(dataset: str, configs: Path = CONFIGS) -> dict[str, Any]:
    path = configs / f"{dataset}.yaml"
    if not path.is_file():
        raise SystemExit(f"no configuration {path}; choose one of {list(DATASETS)}")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config.get("params"), dict):
        raise SystemExit(f"{path}: needs a `params:` mapping of params.yaml overrides")
    return config


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested overrides -> {"section.key": value}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`section.key=value` strings (value parsed as YAML, like `dvc exp run -S`)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set needs section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _has(params: Mapping[str, Any], dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def hydra_value(value: Any) -> str:
    """A value in DVC's (Hydra's) override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise SystemExit(f"cannot express {value!r} as a params override")


def derive(config: Mapping[str, Any], data_root: Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dotted overrides for one run: run defaults, the config, the data root, then --set."""
    flat = {**RUN_DEFAULTS, **flatten(config["params"]),
            "dataset.root": str(Path(data_root).expanduser().resolve())}
    flat.update(extra or {})
    return flat


def apply(params: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml after the overrides (what DVC will write), for validation."""
    import copy
    merged = copy.deepcopy(dict(params))
    for dotted, value in flat.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SystemExit(f"override {dotted}: {part} is not a section")
        node[leaf] = value
    return merged


def set_args(params: Mapping[str, Any], flat: Mapping[str, Any]) -> list[str]:
    """`-S` arguments; keys new to params.yaml get Hydra's `+` (append) prefix."""
    args: list[str] = []
    for dotted, value in flat.items():
        args += ["-S", f"{'' if _has(params, dotted) else '+'}{dotted}={hydra_value(value)}"]
    return args


def problems(params: Mapping[str, Any]) -> list[str]:
    """What would make the run fail, found before it starts (each with its reason)."""
    sys.path.insert(0, str(PROJECT))
    from pipelines.data import SAMPLING
    from pipelines.datasets import get_adapter
    from pipelines.inference import TTA_MODES
    from pipelines.losses import make_loss
    from pipelines.schedules import learning_rate

    found: list[str] = []
    try:
        get_adapter(params["dataset"]["name"])
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        found.append(f"dataset.name: {exc}")
    zoo, archs = params.get("zoo", {}), params.get("architectures") or []
    if not archs:
        found.append("architectures: empty")
    found += [f"architectures: {a!r} has no zoo entry (params.yaml zoo:)" for a in archs if a not in zoo]
    found += [f"zoo.{a}: entry without a builder" for a in archs if a in zoo and "builder" not in zoo[a]]
    tp = params["train"]
    for check in (lambda: learning_rate(tp, 10),
                  lambda: make_loss(tp["loss"], gamma=float(tp.get("focal_gamma", 2.0)),
                                    label_smoothing=float(tp.get("label_smoothing", 0.0)))):
        try:
            check()
        except (ValueError, KeyError) as exc:
            found.append(f"train: {exc}")
    if tp.get("sampling", "natural") not in SAMPLING:
        found.append(f"train.sampling: {tp.get('sampling')!r} not in {list(SAMPLING)}")
    if params.get("evaluate", {}).get("tta", "none") not in TTA_MODES:
        found.append(f"evaluate.tta: {params['evaluate'].get('tta')!r} not in {list(TTA_MODES)}")
    if not Path(params["dataset"]["root"]).is_dir():
        found.append(f"dataset.root: {params['dataset']['root']} is not a folder")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--data", type=Path, required=True, help="root of the data set's native layout")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra override on top of the config, e.g. train.epochs=1")
    parser.add_argument("--name", help="DVC experiment name (default real-<dataset>-<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    args = parser.parse_args(argv)

    params = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    config = load_config(args.dataset)
    flat = derive(config, args.data, parse_set(args.set))
    found = problems(apply(params, flat))
    if found:
        print("configuration problems:\n  " + "\n  ".join(found), file=sys.stderr)
        return 2
    name = args.name or f"real-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = ["dvc", "exp", "run", "--name", name, *set_args(params, flat)]
    print(" ".join(command if not args.dry_run else [repr(c) if " " in c else c for c in command]))
    if args.dry_run:
        return 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(f"dvc exp run failed after {wall:.0f} s (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    subprocess.run([sys.executable, "-m", "pipelines.summary"], cwd=PROJECT, env=env, check=True)
    print(f"  configuration: configs/{args.dataset}.yaml ({config.get('description', '')}); "
          f"experiment {name}; wall time {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
