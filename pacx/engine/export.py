"""Export a trained CXR encoder as a plain timm backbone (safetensors + JSON) or ONNX.

The exported folder is in timm's own local-folder / Hugging Face hub layout: ``model.safetensors``
with timm's key names and a ``config.json`` holding ``architecture``, ``num_classes`` (0),
``num_features``, ``global_pool``, ``model_args`` (the real ``img_size``, ``patch_size``,
``embed_dim``, ``depth``, ``num_heads``, ... that rebuild the encoder; they override whatever
the timm ``architecture`` name would default to) and ``pretrained_cfg`` (the input contract:
``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``). So anyone can
load it without pacx::

    import timm
    model = timm.create_model("local-dir:backbone", pretrained=True)  # num_classes=0: embeddings
    cfg = timm.data.resolve_data_config({}, model=model)  # input size, mean, std of training

pacx's own metadata (format version, pooling, provenance such as the stage or the MAE mask
ratio) sits under the top-level ``"pacx"`` key, which timm ignores. The embedding is the class
token after the final norm for PaCX-MAE (``model(x)`` with ``num_classes=0``).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import pacx
from pacx.constants import IMAGENET_MEAN, IMAGENET_STD
from pacx.io import atomic_write, load_json, load_safetensors, make_temp_dir, save_json, save_safetensors

from .checkpoint import _publish_dir

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "BACKBONE_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "backbone_config",
    "backbone_input_config",
    "export_backbone",
    "export_onnx",
    "load_backbone",
    "onnx_max_abs_diff",
]

BACKBONE_FORMAT = "pacx-backbone/2"
# Version 1 kept pacx's keys at the top level and "model_kwargs" instead of timm's "model_args";
# timm could not read it. load_backbone still does.
_LEGACY_FORMAT = "pacx-backbone/1"
_TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer default LayerNorm epsilon
# pacx resizes the whole image to S x S (aspect ratio not kept) with bilinear, antialiased
# interpolation: timm's "squash" crop mode at crop_pct 1 is that transform.
_INPUT_TRANSFORM = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}
# timm names for standard sizes (any ViT name works: the keyword arguments override it).
_NAMES = {
    (192, 12, 3): "vit_tiny_patch16_224",
    (384, 12, 6): "vit_small_patch16_224",
    (768, 12, 12): "vit_base_patch16_224",
    (1024, 24, 16): "vit_large_patch16_224",
}


def _vit_class() -> type:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def backbone_config(encoder: VisionTransformer) -> dict[str, Any]:
    """The timm name and keyword arguments that rebuild ``encoder`` (with ``num_classes=0``).

    Args:
        encoder: a timm ``VisionTransformer`` (LoRA merged and unwrapped).

    Returns:
        ``{"architecture": str, "model_kwargs": dict, "norm_eps": float}``. ``model_kwargs``
        leaves out ``num_classes`` (always 0, passed explicitly when loading). ``norm_eps`` is
        timm's default 1e-6 unless the encoder was built with another LayerNorm epsilon, in
        which case :func:`load_backbone` passes it back as ``norm_layer``.

    Raises:
        ValueError: when ``encoder`` is not a timm ``VisionTransformer`` or uses layers this
            exporter cannot describe with keyword arguments.
    """
    if not isinstance(encoder, _vit_class()):
        raise ValueError(f"encoder must be a timm VisionTransformer, got {type(encoder).__name__}")
    block = encoder.blocks[0] if len(encoder.blocks) else None
    if block is None:
        raise ValueError("encoder must have at least one block, got depth 0")
    patch = encoder.patch_embed
    embed_dim = int(encoder.embed_dim)
    norm = next((m for m in (encoder.norm, encoder.fc_norm, block.norm1) if isinstance(m, nn.LayerNorm)), None)
    if norm is None:
        raise ValueError(f"encoder must use LayerNorm, got {type(block.norm1).__name__}")
    if not isinstance(block.mlp.act, nn.GELU):
        raise ValueError(
            f"encoder MLP activation must be GELU to be described by timm kwargs, got {type(block.mlp.act).__name__}"
        )

    img_size = tuple(int(v) for v in patch.img_size)
    patch_size = tuple(int(v) for v in patch.patch_size)
    kwargs: dict[str, Any] = {
        "img_size": img_size[0] if img_size[0] == img_size[1] else list(img_size),
        "patch_size": patch_size[0] if patch_size[0] == patch_size[1] else list(patch_size),
        "in_chans": int(patch.proj.in_channels),
        "embed_dim": embed_dim,
        "depth": len(encoder.blocks),
        "num_heads": int(block.attn.num_heads),
        "mlp_ratio": block.mlp.fc1.out_features / embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "global_pool": encoder.global_pool,
    }
    # Options that differ from timm's defaults only, so the config stays readable.
    has_fc_norm = not isinstance(encoder.fc_norm, nn.Identity)
    optional = {
        "class_token": (encoder.cls_token is not None, True),
        "reg_tokens": (int(getattr(encoder, "num_reg_tokens", 0)), 0),
        "no_embed_class": (bool(encoder.no_embed_class), False),
        "pre_norm": (not isinstance(encoder.norm_pre, nn.Identity), False),
        "fc_norm": (has_fc_norm, encoder.global_pool in ("avg", "avgmax", "max")),
        "final_norm": (not isinstance(encoder.norm, nn.Identity) or has_fc_norm, True),
        "qk_norm": (not isinstance(block.attn.q_norm, nn.Identity), False),
        "init_values": (1.0 if not isinstance(block.ls1, nn.Identity) else None, None),
        "pos_embed": ("none" if encoder.pos_embed is None else "learn", "learn"),
        "dynamic_img_size": (bool(encoder.dynamic_img_size), False),
        "proj_bias": (block.attn.proj.bias is not None, True),
    }
    for key, (value, default) in optional.items():
        if value != default:
            kwargs[key] = value
    name = getattr(encoder, "pretrained_cfg", {}).get("architecture") or _NAMES.get(
        (embed_dim, kwargs["depth"], kwargs["num_heads"]), "vit_base_patch16_224"
    )
    return {"architecture": name, "model_kwargs": kwargs, "norm_eps": float(norm.eps)}


def _create(architecture: str, model_kwargs: Mapping[str, Any], norm_eps: float, **extra: Any) -> VisionTransformer:
    import timm

    kwargs = dict(model_kwargs)
    kwargs["num_classes"] = 0
    if norm_eps != _TIMM_NORM_EPS:
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=norm_eps)
    return timm.create_model(architecture, pretrained=False, **kwargs, **extra)


def _check_state(encoder: VisionTransformer, arch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's weights without a classifier head, checked against the rebuilt timm model."""
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    with torch.device("meta"):  # only names and shapes are compared: skip the initialisation
        expected = _create(arch["architecture"], arch["model_kwargs"], arch["norm_eps"]).state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        hint = " (merge and unwrap LoRA first)" if any("lora" in k or "base_layer" in k for k in unexpected) else ""
        raise ValueError(
            f"encoder keys do not match timm's {arch['architecture']}{hint}: "
            f"unexpected {unexpected[:5]}, missing {missing[:5]}"
        )
    wrong = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"encoder tensor shapes differ from the rebuilt timm model for {wrong[:5]}")
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _hub_config(
    encoder: VisionTransformer,
    arch: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    pool: str,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``config.json`` in timm's hub layout, with pacx's metadata under ``"pacx"``."""
    kwargs = arch["model_kwargs"]
    size = kwargs["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return {
        "architecture": arch["architecture"],
        "num_classes": 0,
        "num_features": int(encoder.num_features),
        "global_pool": pool,
        "model_args": dict(kwargs),
        "pretrained_cfg": {
            "input_size": [kwargs["in_chans"], int(height), int(width)],
            "fixed_input_size": not kwargs.get("dynamic_img_size", False),
            **_INPUT_TRANSFORM,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "num_classes": 0,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "pacx": {
            "format": BACKBONE_FORMAT,
            "norm_eps": arch["norm_eps"],
            "pool": pool,
            "embedding": "forward_head(forward_features(x), pre_logits=True), i.e. model(x) with num_classes=0",
            "timm_version": _timm_version(),
            "pacx_version": pacx.__version__,
            "extra": dict(extra or {}),
        },
    }


def export_backbone(
    encoder: VisionTransformer,
    path_dir: str | os.PathLike,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pool: str = "token",
    extra: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> Path:
    """Write ``encoder`` as a timm local-folder / hub backbone, atomically.

    ``timm.create_model("local-dir:<path_dir>", pretrained=True)`` then rebuilds it with its real
    size and weights, and ``timm.data.resolve_data_config({}, model=model)`` gives its input
    size, ``mean``, ``std``, bilinear interpolation and a plain resize (``crop_pct`` 1,
    ``crop_mode`` "squash"). The folder and its files get the permissions of the user's umask.

    A LayerNorm epsilon other than timm's 1e-6 cannot be written in timm's ``model_args``: it is
    kept in pacx's metadata, :func:`load_backbone` restores it, and a ``UserWarning`` says that
    plain timm would build 1e-6 layers.

    Args:
        encoder: timm ``VisionTransformer``; a classifier head, if any, is dropped.
        path_dir: destination folder (replaced if it exists).
        mean: per-channel normalisation mean of the inputs.
        std: per-channel normalisation standard deviation.
        pool: how the embedding is pooled; must equal ``encoder.global_pool``.
        extra: JSON-serialisable metadata stored under ``config["pacx"]["extra"]`` (e.g. the
            training stage or the MAE mask ratio).
        verify: rebuild the model from the written files, with pacx and with plain timm, and
            check that its features match ``encoder``'s exactly on a random input.

    Returns:
        The folder.

    Raises:
        ValueError: on mismatched ``mean``/``std`` lengths, a ``pool`` that differs from the
            encoder's, keys that timm does not expect (e.g. LoRA still wrapped), or a failed
            verification.

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, num_classes=0)
        >>> import tempfile
        >>> out = export_backbone(vit, tempfile.mkdtemp() + "/backbone")
        >>> sorted(p.name for p in out.iterdir())
        ['config.json', 'model.safetensors']
    """
    arch = backbone_config(encoder)
    in_chans = arch["model_kwargs"]["in_chans"]
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std must have in_chans={in_chans} values, got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if pool != encoder.global_pool:
        raise ValueError(f"pool must match the encoder's global_pool {encoder.global_pool!r}, got {pool!r}")
    if arch["norm_eps"] != _TIMM_NORM_EPS:
        warnings.warn(
            f"encoder LayerNorm eps is {arch['norm_eps']:g}, which timm's config.json cannot express: "
            f"timm.create_model('local-dir:...') would build eps={_TIMM_NORM_EPS:g} layers (features differ "
            "slightly); pacx.engine.load_backbone restores it",
            UserWarning,
            stacklevel=2,
        )
    weights = _check_state(encoder, arch)
    config = _hub_config(encoder, arch, mean, std, pool, extra)

    path_dir = Path(path_dir)
    tmp = make_temp_dir(path_dir.parent, prefix=f"{path_dir.name}.tmp-")
    try:
        save_safetensors(weights, tmp / "model.safetensors", {"format": "pt"})
        save_json(config, tmp / "config.json")
        if verify:
            _verify(encoder, tmp, plain_timm=arch["norm_eps"] == _TIMM_NORM_EPS)
        return _publish_dir(tmp, path_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _timm_version() -> str:
    import timm

    return timm.__version__


def _verify(encoder: nn.Module, folder: Path, plain_timm: bool) -> None:
    import timm

    rebuilt = {"pacx.engine.load_backbone": load_backbone(folder)}
    if plain_timm:  # the README's route, through timm's own config parsing and weight loading
        rebuilt["timm local-dir"] = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    contract = backbone_input_config(folder)
    # Compared on CPU, in the encoder's dtype: GPU kernels would round differently.
    reference = copy.deepcopy(encoder).cpu().eval()
    dtype = next(reference.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, contract["in_chans"], *contract["image_size"], generator=generator).to(dtype)
    with torch.no_grad():
        # Pooled pre-logits features: a classifier head of the encoder is not exported.
        want = reference.forward_head(reference.forward_features(x), pre_logits=True)
        for route, model in rebuilt.items():
            got = model.to(dtype)(x)
            if want.shape != got.shape or not torch.equal(want, got):
                diff = (want - got).abs().max().item() if want.shape == got.shape else float("nan")
                raise ValueError(
                    f"exported backbone loaded with {route} does not reproduce the encoder's features "
                    f"(max abs diff {diff})"
                )


def _read_config(path_dir: Path) -> dict[str, Any]:
    """Both layouts of ``config.json`` as one dict: architecture, model_args, norm_eps, input contract."""
    path = path_dir / "config.json"
    cfg = load_json(path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    pacx_meta = cfg.get("pacx")
    fmt = pacx_meta.get("format") if isinstance(pacx_meta, dict) else cfg.get("format")
    try:
        if fmt == BACKBONE_FORMAT:
            data = cfg["pretrained_cfg"]
            return {
                "timm_layout": True,
                "architecture": cfg["architecture"],
                "model_args": cfg["model_args"],
                "norm_eps": float(pacx_meta.get("norm_eps", _TIMM_NORM_EPS)),
                "image_size": [int(v) for v in data["input_size"][1:]],
                "in_chans": int(data["input_size"][0]),
                "mean": [float(v) for v in data["mean"]],
                "std": [float(v) for v in data["std"]],
            }
        if fmt == _LEGACY_FORMAT:
            return {
                "timm_layout": False,
                "architecture": cfg["architecture"],
                "model_args": cfg["model_kwargs"],
                "norm_eps": float(cfg.get("norm_eps", _TIMM_NORM_EPS)),
                "image_size": [int(v) for v in cfg["image_size"]],
                "in_chans": int(cfg["in_chans"]),
                "mean": [float(v) for v in cfg["mean"]],
                "std": [float(v) for v in cfg["std"]],
            }
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise ValueError(f"{path}: incomplete pacx backbone config ({type(err).__name__}: {err})") from err
    raise ValueError(
        f"{path}: not a pacx backbone config: expected config['pacx']['format'] == {BACKBONE_FORMAT!r} "
        f"(or a top-level format {_LEGACY_FORMAT!r}), got {fmt!r}"
    )


def backbone_input_config(path_dir: str | os.PathLike) -> dict[str, Any]:
    """The input contract of an exported backbone: what an image must look like before ``model(x)``.

    Works on both the current layout and pacx-backbone/1 folders.

    Args:
        path_dir: folder written by :func:`export_backbone`.

    Returns:
        ``{"image_size": [H, W], "in_chans": C, "mean": [...], "std": [...]}``.

    Raises:
        FileNotFoundError: when ``config.json`` is missing.
        ValueError: when it is not a pacx backbone config (the message names the file).

    Example:
        >>> backbone_input_config("runs/pacx/backbones/pacx")["image_size"]  # doctest: +SKIP
        [224, 224]
    """
    cfg = _read_config(Path(path_dir))
    return {key: cfg[key] for key in ("image_size", "in_chans", "mean", "std")}


def load_backbone(path_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> VisionTransformer:
    """Rebuild an exported backbone (current or pacx-backbone/1 layout).

    The architecture comes from ``timm.create_model("local-dir:<path_dir>")`` for the current
    layout (so pacx reads ``config.json`` exactly as timm does; a non-default LayerNorm epsilon
    is passed back as ``norm_layer``), and the weights are loaded strictly from
    ``model.safetensors``.

    Args:
        path_dir: folder written by :func:`export_backbone`.
        map_location: device of the returned model.

    Returns:
        The ``VisionTransformer`` in eval mode; ``pretrained_cfg`` carries the mean, std and
        input size, so ``timm.data.resolve_data_config`` finds them.

    Raises:
        FileNotFoundError: when a file is missing.
        ValueError: when ``config.json`` is not a pacx backbone config, or the weights file is
            corrupt or does not match the architecture (the message names the file).
    """
    import timm

    path_dir = Path(path_dir)
    cfg = _read_config(path_dir)
    weights = path_dir / "model.safetensors"
    state = load_safetensors(weights)  # names the file when it is missing or corrupt
    norm = {}
    if cfg["norm_eps"] != _TIMM_NORM_EPS:
        norm["norm_layer"] = functools.partial(nn.LayerNorm, eps=cfg["norm_eps"])
    if cfg["timm_layout"]:
        model = timm.create_model(f"local-dir:{path_dir}", pretrained=False, **norm)
    else:
        overlay = {
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            "input_size": (cfg["in_chans"], *cfg["image_size"]),
        }
        model = _create(cfg["architecture"], cfg["model_args"], cfg["norm_eps"], pretrained_cfg_overlay=overlay)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the architecture in {path_dir / 'config.json'}: {err}") from err
    return model.to(map_location).eval()


def export_onnx(
    encoder: nn.Module,
    path: str | os.PathLike,
    image_size: int | Sequence[int],
    opset: int = 17,
    in_chans: int | None = None,
) -> Path:
    """Export ``encoder`` (images -> embeddings) to ONNX with a dynamic batch axis.

    Input ``image`` (batch, C, H, W) float32, output ``embedding`` (batch, D). Needs the
    optional ``onnx`` extra (``pip install pacx[onnx]``).

    Args:
        encoder: the module to export (a copy is exported, in eval mode on CPU).
        path: destination ``.onnx`` file (written atomically).
        image_size: H (= W) or (H, W).
        opset: ONNX opset version.
        in_chans: input channels; default ``encoder.patch_embed.proj.in_channels`` or 3.

    Returns:
        The written path.

    Raises:
        ImportError: when ``onnx`` is not installed.
        ValueError: on a non-positive image size.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as err:
        raise ImportError("export_onnx needs the optional dependency onnx: pip install 'pacx[onnx]'") from err
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    if in_chans is None:
        proj = getattr(getattr(encoder, "patch_embed", None), "proj", None)
        in_chans = int(proj.in_channels) if proj is not None else 3
    model = copy.deepcopy(encoder).float().cpu().eval()
    example = torch.randn(2, in_chans, *size)

    def _write(tmp: str) -> None:
        names = {"opset_version": opset, "input_names": ["image"], "output_names": ["embedding"]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            try:
                torch.onnx.export(
                    model, (example,), tmp, dynamo=False,
                    dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, **names,
                )  # fmt: skip
            except TypeError:  # a torch without the TorchScript exporter: use torch.export
                batch = torch.export.Dim("batch", min=1)
                torch.onnx.export(model, (example,), tmp, dynamo=True, dynamic_shapes=({0: batch},), **names)

    return atomic_write(path, _write)


def onnx_max_abs_diff(encoder: nn.Module, path: str | os.PathLike, inputs: torch.Tensor) -> float:
    """Largest absolute difference between ``encoder(inputs)`` and ONNX Runtime on CPU.

    Raises:
        ImportError: when ``onnxruntime`` is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("onnx_max_abs_diff needs onnxruntime: pip install 'pacx[onnx]'") from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = copy.deepcopy(encoder).float().cpu().eval()
    with torch.no_grad():
        want = model(inputs.float().cpu()).numpy()
    got = session.run(["embedding"], {"image": inputs.float().cpu().numpy()})[0]
    if want.shape != got.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
    return float(abs(want - got).max())
