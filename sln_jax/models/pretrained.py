"""Load ImageNet-pretrained torchvision ResNet weights into the Flax backbone, by name.

Two file formats hold such a state dict without needing torch here:

* ``.safetensors``: timm's ResNets (e.g. ``timm/resnet50.a1_in1k`` on the Hugging Face hub,
  file ``model.safetensors``) use torchvision's key names and layouts, and load as they are;
* ``.npz``: a torchvision state dict exported once where torch is installed::

    python -c "import numpy as np, torchvision as tv; np.savez('resnet50.npz', **{k: v.numpy() for k, v in tv.models.resnet50(weights='IMAGENET1K_V1').state_dict().items()})"

(``resnet18`` / ``resnet101`` likewise). Then::

    variables = load_torchvision_resnet('resnet50.npz', variables)

or, for training, set ``config.model.pretrained_backbone`` to the file
(``sln_jax.train.load_pretrained_backbone``).

Mapping (torchvision key -> Flax path under ``prefix``, default ``('backbone',)``):
``conv1.weight`` -> ``params/conv1/kernel`` (OIHW -> HWIO); ``bn1.weight`` / ``bn1.bias`` ->
``params/bn1/bn/scale`` / ``bias``; ``bn1.running_mean`` / ``running_var`` ->
``batch_stats/bn1/bn/mean`` / ``var``; ``layerS.B.convI`` / ``bnI`` -> ``layerS_B/convI`` /
``bnI``; ``layerS.B.downsample.0`` / ``.1`` -> ``layerS_B/downsample_conv`` /
``downsample_bn``. ``fc.*`` and ``num_batches_tracked`` are not used. The backbone must use
``norm='frozen_bn'`` (the statistics are BatchNorm's). Inputs are RGB normalized with the
ImageNet mean / std, as torchvision's, which is what the input pipeline produces.
"""

from __future__ import annotations

import os

import flax
import numpy as np

__all__ = ["load_torchvision_resnet", "read_state_dict", "flax_path"]

_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def flax_path(key: str) -> tuple[str, tuple[str, ...]] | None:
    """(collection, module path) of a torchvision ResNet key, or None for unused keys.

    Example: ``layer2.0.downsample.1.running_var`` ->
    ``('batch_stats', ('layer2_0', 'downsample_bn', 'bn', 'var'))``.
    """
    parts = key.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
        return None
    if parts[0].startswith("layer"):
        module = [f"{parts[0]}_{parts[1]}"]
        rest = parts[2:]
        if rest[0] == "downsample":
            rest = ["downsample_conv" if rest[1] == "0" else "downsample_bn"] + rest[2:]
    else:
        module, rest = [], parts
    name, field = rest[0], rest[-1]
    if "conv" in name:
        if field != "weight":
            raise ValueError(f"unexpected torchvision ResNet key {key!r}")
        return "params", tuple(module + [name, "kernel"])
    if field not in _BN_FIELDS:
        raise ValueError(f"unexpected torchvision ResNet key {key!r}")
    collection, leaf = _BN_FIELDS[field]
    return collection, tuple(module + [name, "bn", leaf])


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a ``.safetensors`` or ``.npz`` state dict, by key.

    Raises:
      ValueError: naming the file when it is missing, unreadable or of another format.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except (OSError, SafetensorError) as err:
            raise ValueError(f"{path}: cannot read a .safetensors state dict ({err})") from err
    try:
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, TypeError) as err:
        # TypeError: np.load returns a plain ndarray, not an archive, for a .npy file.
        raise ValueError(f"{path}: cannot read a .npz state dict ({err})") from err


def load_torchvision_resnet(path: str | os.PathLike, variables: dict,
                            prefix: tuple[str, ...] = ("backbone",)) -> dict:
    """Variables with the backbone's weights replaced by a torchvision state dict's.

    Args:
      path: ``.npz`` or ``.safetensors`` holding a torchvision-layout ResNet state dict
        (see the module docstring).
      variables: {'params': ..., 'batch_stats': ...} of the model (e.g. ``SLN.init``).
      prefix: path of the ResNet module inside both collections (``()`` for a bare ResNet).

    Returns:
      A new variables dict (same structure); every backbone conv and norm leaf comes from
      the file, converted to float32 and to Flax layouts.

    Raises:
      ValueError: naming the file and key when a key has no place in the model, a shape
        differs, or a backbone leaf is not provided by the file.
    """
    path = os.fspath(path)
    state = read_state_dict(path)
    flat = {collection: flax.traverse_util.flatten_dict(flax.core.unfreeze(
        variables.get(collection, {}))) for collection in ("params", "batch_stats")}
    backbone_keys = {(c, k) for c, tree in flat.items() for k in tree
                     if k[:len(prefix)] == tuple(prefix)}
    if not any(c == "batch_stats" for c, _ in backbone_keys):
        raise ValueError(f"{path}: the backbone has no BatchNorm statistics; pretrained "
                         "torchvision weights need config.model.norm = 'frozen_bn'")
    loaded = set()
    for key, array in state.items():
        target = flax_path(key)
        if target is None:
            continue
        collection, module_path = target
        full = tuple(prefix) + module_path
        if full not in flat[collection]:
            raise ValueError(f"{path}: key {key!r} has no place in the model "
                             f"({collection}/{'/'.join(full)} does not exist)")
        value = np.asarray(array, np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        expected = tuple(flat[collection][full].shape)
        if value.shape != expected:
            raise ValueError(f"{path}: key {key!r} has shape {value.shape} (Flax layout) "
                             f"but the model expects {expected}")
        flat[collection][full] = value
        loaded.add((collection, full))
    missing = sorted("/".join((c,) + k) for c, k in backbone_keys - loaded)
    if missing:
        raise ValueError(f"{path}: no weights for {len(missing)} backbone leaves, e.g. "
                         f"{missing[0]} (is it the right ResNet depth?)")
    out = dict(variables)
    for collection, tree in flat.items():
        if tree:
            out[collection] = flax.traverse_util.unflatten_dict(tree)
    return out
