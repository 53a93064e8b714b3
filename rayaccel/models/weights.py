"""Initial weights: timm's pretrained ones, or a state dict from a file or a rayaccel run.

Fine-tuning starts from weights trained elsewhere, which rarely fit the new model exactly:
another class count (the classifier is re-initialised), a grey-scale input (the first conv is
summed down to its channels by timm's ``adapt_input_conv``), a DDP or ``torch.compile``
prefix, or a checkpoint nested under ``state_dict``/``model``. ``read_state_dict`` and
``pretrained_state_dict`` produce plain tensors; ``load_initial_weights`` fits them into a
freshly built model and says in one line what was loaded, kept fresh and ignored, so a
silently random backbone cannot pass for a fine-tuned one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torch import nn

from rayaccel.core.storage import CHECKPOINT_STATE_FILE, latest_checkpoint, resolve_path

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Checkpoints of training scripts keep the weights under one of these keys.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
# DistributedDataParallel and torch.compile prefix every name with these.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NAMES_SHOWN = 5


class WeightsError(ValueError):
    """Initial weights that cannot be read or do not fit the model (one readable line)."""


@dataclass(frozen=True)
class InitialWeights:
    """A state dict and where it came from (for the report line)."""

    source: str
    state_dict: dict[str, torch.Tensor]


# ---------------------------------------------------------------- timm's pretrained weights
def pretrained_problem(name: str) -> str | None:
    """Why ``model.pretrained: true`` cannot work for ``name``; None when timm has weights
    (or does not know the model, which the model-name check reports)."""
    from rayaccel.models import RESNET9_NAME

    if name == RESNET9_NAME:
        return (
            f"{RESNET9_NAME} is rayaccel's own model and has no pretrained weights; use "
            "model.init_checkpoint with a file or run folder, or a timm model such as resnet18"
        )
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        return None
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tagged = timm.list_pretrained(f"{name.split('.')[0]}*")[:_NAMES_SHOWN]
        hint = f"timm has weights for {', '.join(tagged)}" if tagged else "train it from scratch"
        return f"timm has no pretrained weights for {name!r}; {hint} or set model.init_checkpoint"
    return None


def weights_location(name: str) -> str:
    """Where timm fetches ``name``'s weights from: its Hugging Face hub id, else its URL."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return "timm's hub"
    if cfg.hf_hub_id:
        return f"hf-hub:{cfg.hf_hub_id} (https://huggingface.co/{cfg.hf_hub_id})"
    return cfg.url or cfg.file or "timm's hub"


def pretrained_state_dict(
    name: str, *, in_chans: int, task: str = "classification", **kwargs
) -> InitialWeights:
    """timm's pretrained weights of ``name`` for ``in_chans`` input channels.

    timm builds the model with its own head (its pretrained class count), applies its
    checkpoint filter (position-embedding resampling for another ``img_size``, the first
    conv for other channel counts) and downloads through its hub cache; the head is left
    for ``load_initial_weights`` to keep or re-initialise. For segmentation only the
    backbone's weights are returned, named as in ``SegmentationFPN``.

    Raises:
        WeightsError: If the weights cannot be fetched (no network, no mirror): the message
            names the model, where timm looks, and the ways round it.
    """
    import timm

    try:
        if task == "segmentation":
            from rayaccel.models.segmentation import SegmentationFPN

            backbone = SegmentationFPN(
                name, num_classes=1, in_chans=in_chans, pretrained=True, **kwargs
            ).backbone
            state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        else:
            state = timm.create_model(
                name, pretrained=True, in_chans=in_chans, **kwargs
            ).state_dict()
    except (OSError, RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(
            f"cannot fetch timm's pretrained weights for {name!r} from {weights_location(name)}: "
            f"{type(err).__name__}: {reason[:200]}; make the hub reachable from the driver "
            "(HF_ENDPOINT for a mirror, HF_HOME for a pre-filled cache, HF_HUB_OFFLINE unset) "
            "or download the file and set model.init_checkpoint to it"
        ) from err
    return InitialWeights(source=f"timm {name} ({weights_location(name)})", state_dict=state)


# ---------------------------------------------------------------- files and run folders
def read_state_dict(location: str) -> InitialWeights:
    """The tensors of a weight file (``.safetensors``, ``.pth``/``.pt``/``.bin``), of a
    rayaccel run folder's latest checkpoint, or of one checkpoint folder; local or a URI.

    Raises:
        WeightsError: If nothing is there, the file is not a state dict, or the folder holds
            no checkpoint.
    """
    fs, path = resolve_path(location)
    import pyarrow.fs as pafs

    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise WeightsError(f"{location}: no such file or folder")
    if kind == pafs.FileType.Directory:
        own_state = f"{path}/{CHECKPOINT_STATE_FILE}"
        if fs.get_file_info(own_state).type == pafs.FileType.File:
            checkpoint = location
        else:
            checkpoint = latest_checkpoint(location)
            if checkpoint is None:
                raise WeightsError(
                    f"{location}: is a folder without rayaccel checkpoints (neither "
                    f"{CHECKPOINT_STATE_FILE} nor checkpoint_*/{CHECKPOINT_STATE_FILE}); give "
                    "a run folder, a checkpoint folder or a weight file"
                )
        payload = torch.load(
            io.BytesIO(_read_bytes(f"{checkpoint.rstrip('/')}/{CHECKPOINT_STATE_FILE}")),
            map_location="cpu",
            weights_only=False,  # rayaccel's own checkpoint: it also pickles RNG states
        )
        return InitialWeights(source=checkpoint, state_dict=payload["model"])
    if not location.endswith(WEIGHT_FILE_SUFFIXES):
        raise WeightsError(
            f"{location}: is not a weight file (expected {', '.join(WEIGHT_FILE_SUFFIXES)}) "
            "or a run folder"
        )
    data = _read_bytes(location)
    if location.endswith(".safetensors"):
        from safetensors.torch import load

        try:
            return InitialWeights(source=location, state_dict=load(data))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise WeightsError(f"{location}: not a safetensors file ({err})") from err
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise WeightsError(
            f"{location}: cannot be read as a tensors-only torch file "
            f"({str(err).splitlines()[0][:160]}); save just the weights with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        ) from err
    return InitialWeights(source=location, state_dict=_tensors_of(payload, location))


def _read_bytes(location: str) -> bytes:
    fs, path = resolve_path(location)
    with fs.open_input_file(path) as stream:
        return stream.read()


def _tensors_of(payload: object, location: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded torch file, unwrapped from a training checkpoint's keys."""
    for key in _NESTED_KEYS:
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not payload:
        raise WeightsError(f"{location}: holds no state dict (got {type(payload).__name__})")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            f"{location}: holds no tensors (its keys: {', '.join(list(payload)[:_NAMES_SHOWN])})"
        )
    return tensors


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names without DDP's ``module.`` or torch.compile's ``_orig_mod.`` (when all have it)."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
                changed = True
    return state_dict


# ---------------------------------------------------------------- fitting into the model
def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of ``model``'s classifier head(s), as timm's pretrained cfg gives
    them (``fc``; ``head``, ``head_dist``); ``head`` for rayaccel's own models."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    if names:
        return (names,) if isinstance(names, str) else tuple(names)
    return ("head",) if isinstance(getattr(model, "head", None), nn.Module) else ()


def load_initial_weights(model: nn.Module, weights: InitialWeights) -> str:
    """Loads what fits of ``weights`` into ``model``; returns the one-line report.

    A classifier whose shape differs (another class count) keeps the model's fresh
    initialisation; a first conv for another channel count is adapted by timm; any other
    tensor of another shape keeps its fresh values and is named.

    Raises:
        WeightsError: If not one tensor fits (weights of another architecture).
    """
    state = strip_wrapper_prefixes(dict(weights.state_dict))
    own = model.state_dict()
    heads = classifier_names(model)

    def in_head(key: str) -> bool:
        return any(key == h or key.startswith(f"{h}.") for h in heads)

    notes = []
    head_mismatch = [k for k in state if in_head(k) and k in own and state[k].shape != own[k].shape]
    if head_mismatch:
        weight = next((k for k in head_mismatch if k.endswith("weight")), head_mismatch[0])
        notes.append(
            f"classifier {'/'.join(heads)} re-initialised ({state[weight].shape[0]} -> "
            f"{own[weight].shape[0]} classes)"
        )
        state = {k: v for k, v in state.items() if not in_head(k)}
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first_conv, str):
        key = f"{first_conv}.weight"
        if key in state and key in own and state[key].shape != own[key].shape:
            adapted = _adapted_input_conv(state[key], own[key])
            if adapted is not None:
                notes.append(
                    f"{first_conv} adapted from {state[key].shape[1]} to "
                    f"{own[key].shape[1]} input channels"
                )
                state[key] = adapted
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        notes.append(
            "shape mismatch, kept fresh: "
            + _names(
                [f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}" for k in mismatched]
            )
        )
        state = {k: v for k, v in state.items() if k not in mismatched}
    fitting = [k for k in state if k in own]
    if not fitting:
        raise WeightsError(
            f"{weights.source}: not one of its {len(weights.state_dict)} tensors fits the model "
            f"(it holds e.g. {_names(list(weights.state_dict))}; the model has e.g. "
            f"{_names(list(own))}); is it a checkpoint of another architecture?"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not in_head(k) or not head_mismatch]
    missing = [k for k in missing if k not in mismatched]
    if missing:
        notes.append(f"missing, kept fresh: {_names(missing)}")
    if result.unexpected_keys:
        notes.append(f"unexpected, ignored: {_names(result.unexpected_keys)}")
    loaded = f"{len(fitting)}/{len(own)} tensors from {weights.source}"
    return "[rayaccel] init weights: " + "; ".join([loaded, *notes])


def _adapted_input_conv(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The first conv's kernel summed or repeated to the model's input channels (timm's
    rule), or None when more than the channel count differs."""
    from timm.models import adapt_input_conv

    if (
        weight.ndim != 4
        or weight.shape[:1] != target.shape[:1]
        or weight.shape[2:] != target.shape[2:]
    ):
        return None
    return adapt_input_conv(target.shape[1], weight, base_chans=weight.shape[1])


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" (+{len(names) - _NAMES_SHOWN} more)" if len(names) > _NAMES_SHOWN else "")


def initial_weights(
    name: str,
    *,
    in_chans: int,
    task: str,
    pretrained: bool,
    init_checkpoint: str | None,
    **kwargs,
) -> InitialWeights | None:
    """The weights a model named ``name`` starts from: timm's pretrained ones
    (``pretrained``), those of ``init_checkpoint``, or None (random).

    Args:
        name: The model name; timm's pretrained weights are built for it.
        in_chans: Input channels (timm adapts its pretrained first conv to them).
        task: ``"classification"`` or ``"segmentation"`` (backbone weights only).
        pretrained: Use timm's pretrained weights.
        init_checkpoint: A weight file, a run folder or a checkpoint folder (path or URI).
        **kwargs: The model's keyword arguments (timm's filter adapts, e.g., ``img_size``).
    """
    if pretrained:
        return pretrained_state_dict(name, in_chans=in_chans, task=task, **kwargs)
    if init_checkpoint is not None:
        return read_state_dict(init_checkpoint)
    return None
