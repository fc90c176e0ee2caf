"""DINOv2 (Oquab et al., 2024): the torch.hub backbones, with and without registers.

The hub files (``dinov2_vit{s,b,l,g}14_pretrain.pth``, ``..._reg4_pretrain.pth``) are flat
state dicts of facebookresearch/dinov2's ``DinoVisionTransformer``: patch 14, a position
table for a 37x37 grid (518 px) plus the class token, ``mask_token`` (iBOT's masked-patch
embedding, unused by a backbone), LayerScale in ``ls1``/``ls2.gamma``, ``register_tokens``
in the reg4 files and, for ViT-g, a SwiGLU MLP (``w12``: both halves, ``w3``: output).

They load into timm's ``VisionTransformer`` as timm converts them (``_convert_dinov2``):
``w12``/``w3`` become the packed SwiGLU's ``fc1``/``fc2`` (timm's ``GluMlp`` computes
silu(first half) * second half, as DINOv2's ``SwiGLUFFN`` does); registers become
``reg_token`` in a model without position entries for prefix tokens, so the class
token's entry is added into ``cls_token`` once (DINOv2 adds it to the class token every
forward and gives the registers none).

The position table is resampled here to the model's grid exactly as the release's
``interpolate_pos_encoding`` does at every forward (bicubic in float32): the plain hub
models use ``interpolate_offset=0.1`` (a scale factor of ``(grid + 0.1) / 37``) without
antialiasing, the reg4 models ``interpolate_offset=0`` (the output size) with
antialiasing. Inputs of another size than the one the backbone was built for are
resampled again by timm from that grid.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from torch import nn

from bench.backbones.adapter import (
    VIT_BASE,
    VIT_LARGE,
    VIT_SMALL,
    Adapter,
    AdapterError,
    CheckpointFormat,
    SizeSpec,
    StateDict,
    as_pair,
)

PATCH = 14
SMALL = dataclasses.replace(VIT_SMALL, patch_size=PATCH)
BASE = dataclasses.replace(VIT_BASE, patch_size=PATCH)
LARGE = dataclasses.replace(VIT_LARGE, patch_size=PATCH)
# ViT-g/14 ("vit_giant2"): 1536 wide, 40 blocks, 24 heads, a SwiGLU MLP of 2 x 4096 hidden
# units. timm's packed SwiGLU takes the doubled width as mlp_ratio (8192 / 1536), as its
# vit_giant_patch14_dinov2 does. The protocols read the blocks at the same fractions of
# depth as ViT-L's 8/12/16/24 and ViT-B's 4/6/8/12 (1/3, 1/2, 2/3, all): 13/20/27/40.
GIANT = SizeSpec(
    name="giant",
    letter="g",
    embed_dim=1536,
    depth=40,
    num_heads=24,
    patch_size=PATCH,
    aliases=("vit-g", "vit_g", "giant2"),
    vit_kwargs={"mlp_ratio": 2.66667 * 2, "mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU},
)

# The hub builders' interpolate_pos_encoding settings (hub/backbones.py).
PLAIN_INTERPOLATION = {"offset": 0.1, "antialias": False}
REGISTER_INTERPOLATION = {"offset": 0.0, "antialias": True}


def interpolate_pos_encoding(
    table: torch.Tensor, grid: tuple[int, int], offset: float, antialias: bool
) -> torch.Tensor:
    """``1 x M*M x D`` patch entries -> ``1 x h*w x D``, as DINOv2's interpolate_pos_encoding."""
    n, dim = table.shape[1], table.shape[2]
    side = int(round(n**0.5))
    if side * side != n:
        raise AdapterError(f"pos_embed holds {n} patch entries, which is not a square grid")
    if (side, side) == tuple(grid):
        return table
    if offset:
        resize = {"scale_factor": ((grid[0] + offset) / side, (grid[1] + offset) / side)}
    else:
        resize = {"size": tuple(grid)}
    square = table.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    out = F.interpolate(square, mode="bicubic", antialias=antialias, **resize)
    if tuple(out.shape[-2:]) != tuple(grid):
        raise AdapterError(f"interpolating pos_embed to {grid} gave {tuple(out.shape[-2:])}")
    return out.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(table.dtype)


# DINOv2's SwiGLUFFN -> timm's packed SwiGLU (GluMlp): same halves, same order.
_SWIGLU = re.compile(r"\.mlp\.(w12|w3)\.")
_SWIGLU_NAMES = {"w12": ".mlp.fc1.", "w3": ".mlp.fc2."}


def _mlp_kind(state: StateDict, context: dict) -> None:
    """A SwiGLU file needs the SwiGLU size (ViT-g) and the other way round."""
    swiglu = any(".mlp.w12." in k for k in state)
    want = context["size"] == GIANT.name
    if swiglu != want:
        kind = "a SwiGLU MLP (w12/w3, ViT-g)" if swiglu else "a GELU MLP (fc1/fc2)"
        raise AdapterError(
            f"checkpoint {context.get('source', '')} has {kind}, but size "
            f"{context['size']!r} {'has' if want else 'has not'} one: pass size "
            f"{'g' if swiglu else 'S, B or L'}"
        )


def _hub_to_timm(state: StateDict, context: dict) -> StateDict:
    """The hub layout as timm's VisionTransformer holds it (see the module doc)."""
    _mlp_kind(state, context)
    state = {_SWIGLU.sub(lambda m: _SWIGLU_NAMES[m.group(1)], k): v for k, v in state.items()}
    pos = state.get("pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.ndim != 3:
        return state  # the key check names what is missing
    patch = int(context.get("patch_size") or PATCH)
    img = as_pair(context.get("img_size", 224))
    grid = (img[0] // patch, img[1] // patch)
    context["pretrain_img_size"] = int(round((pos.shape[1] - 1) ** 0.5)) * patch
    registers = state.pop("register_tokens", None)
    how = REGISTER_INTERPOLATION if registers is not None else PLAIN_INTERPOLATION
    table = interpolate_pos_encoding(pos[:, 1:], grid, **how)
    if registers is None:
        state["pos_embed"] = torch.cat([pos[:, :1], table], dim=1)
    else:
        state["reg_token"] = registers
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = table
        vit_kwargs = context.setdefault("vit_kwargs", {})
        vit_kwargs.update(reg_tokens=int(registers.shape[1]), no_embed_class=True)
    context.setdefault("meta_extra", {}).update(
        register_tokens=0 if registers is None else int(registers.shape[1]),
        pos_interpolation=how,
    )
    return state


HUB = CheckpointFormat(
    name="hub",
    description="torch.hub release dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth: a flat state "
    "dict; mask_token dropped, register_tokens -> reg_token, SwiGLU w12/w3 -> fc1/fc2, "
    "position table interpolated as the release's interpolate_pos_encoding",
    strip_prefixes=("module.",),
    drop=(r"^mask_token$",),
    convert=_hub_to_timm,
)

ADAPTER = Adapter(
    name="dinov2",
    description="DINOv2 self-supervised ViT/14 (torch.hub backbones, with or without registers)",
    formats=(HUB,),
    sizes=(SMALL, BASE, LARGE, GIANT),
    published_sizes=("small", "base", "large", "giant"),
    # Every DINOv2 block has LayerScale (the checkpoint's gammas replace this init).
    vit_kwargs={"init_values": 1e-5},
)
