"""The fine-tuning backbone of the released UNIP pipeline: LayerScale and relative position bias.

The released fine-tuning configs build their ViT with ``init_values=1.`` (a trainable
per-channel gamma multiplying the attention and the MLP branch of every block) and, for
the baselines, ``use_rel_pos_bias=True`` (BEiT's per-block relative position bias: a
zero-initialised table of ``(2*Wh-1)*(2*Ww-1) + 3`` rows by heads, indexed by the offset
between two patches of the ``Wh x Ww`` training grid, with three extra rows for
cls -> patch, patch -> cls and cls -> cls, added to q·k·scale before the softmax).
Probing builds a plain ViT, so these are added to a loaded backbone in the fine-tuning
path only, in timm's slots: ``blocks.i.ls1.gamma``/``ls2.gamma`` and
``blocks.i.attn.relative_position_bias_table`` (the release's name).

Another input grid than the table's window (whole-image inference, another crop) gets the
table's ``(2Wh-1) x (2Ww-1)`` part resampled bicubically (align_corners=False, as the
absolute position table is) to ``(2h-1) x (2w-1)``; the three prefix-token rows are kept as
they are. That treats another grid as the same frame seen at another resolution, as the
resampled absolute position embedding does, so the two position signals stay consistent.

Other architectures: Eva / EVA-02 blocks keep LayerScale in ``gamma_1``/``gamma_2``, so
LayerScale is added there (trained values, EVA-02-L's, are kept). An architecture with its
own rotary position embedding (EVA-02's RoPE, relative by construction) gets no relative
position bias on top: the request is recorded as skipped in ``fine_tune_extras`` rather
than stacking a second relative-position scheme the method was never trained with. Any
other block or attention type is refused with an error naming it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from timm.models.vision_transformer import Attention
from torch import nn

from bench.backbones.backbone import Backbone

# Rows after the (2Wh-1)(2Ww-1) offsets: prefix -> patch, patch -> prefix, prefix -> prefix.
NUM_PREFIX_ENTRIES = 3


def relative_position_index(
    grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """``(P + h*w) x (P + h*w)`` table rows of every (query, key) pair, as BEiT builds it.

    Patch pairs: row ``(dy + h-1) * (2w-1) + (dx + w-1)`` of the query-minus-key offset.
    With ``R = (2h-1)(2w-1)``: a prefix-token query gets row R (cls -> token), a
    prefix-token key R+1 (token -> cls), prefix-to-prefix R+2 (cls -> cls). With one
    prefix token this is the release's index exactly; further prefix tokens (a distilled
    DeiT's) share the class token's rows.
    """
    h, w = int(grid[0]), int(grid[1])
    p = int(num_prefix_tokens)
    if h < 1 or w < 1 or p < 0:
        raise ValueError(f"relative position index needs a positive grid, got {grid}")
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
    coords = coords.flatten(1)  # 2 x hw
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # hw x hw x 2
    rows = (rel[..., 0] + h - 1) * (2 * w - 1) + (rel[..., 1] + w - 1)
    n_rel = (2 * h - 1) * (2 * w - 1)
    index = torch.zeros((p + h * w, p + h * w), dtype=torch.long)
    index[p:, p:] = rows
    index[:p, :] = n_rel  # a prefix query (cls -> token)
    index[:, :p] = n_rel + 1  # a prefix key (token -> cls)
    index[:p, :p] = n_rel + 2  # cls -> cls
    return index


def resample_table(table: torch.Tensor, window: tuple[int, int], grid: tuple[int, int]):
    """The table of ``window`` for ``grid``: offsets resampled bicubically, prefix rows kept."""
    if tuple(grid) == tuple(window):
        return table
    src = (2 * window[0] - 1, 2 * window[1] - 1)
    dst = (2 * grid[0] - 1, 2 * grid[1] - 1)
    offsets, prefix = table[:-NUM_PREFIX_ENTRIES], table[-NUM_PREFIX_ENTRIES:]
    heads = table.shape[-1]
    t = offsets.reshape(1, *src, heads).permute(0, 3, 1, 2)
    t = F.interpolate(t.float(), size=dst, mode="bicubic", align_corners=False)
    t = t.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], heads).to(table.dtype)
    return torch.cat([t, prefix], dim=0)


class RelPosBiasAttention(Attention):
    """timm's ``Attention`` plus a relative position bias, passed to it as ``attn_mask``.

    Built from an existing attention module, whose weights and settings it takes over, so
    the fused ``scaled_dot_product_attention`` path (and everything else timm's forward
    does) is unchanged: softmax(q·k·scale + bias) · v.
    """

    def __init__(
        self, base: Attention, window: tuple[int, int], num_prefix_tokens: int = 1
    ) -> None:
        nn.Module.__init__(self)
        for name, child in base.named_children():
            self.add_module(name, child)
        for name, value in vars(base).items():  # num_heads, head_dim, scale, fused_attn ...
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        self.train(base.training)
        self.window = (int(window[0]), int(window[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        # Set by a hook on the patch embedding: the grid of the tokens being processed.
        self.token_grid: tuple[int, int] | None = None
        self._index_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        ref = base.qkv.weight
        n_rel = (2 * self.window[0] - 1) * (2 * self.window[1] - 1) + NUM_PREFIX_ENTRIES
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(n_rel, self.num_heads, device=ref.device, dtype=ref.dtype)
        )
        # Derived from the window alone, so not part of the state dict.
        self.register_buffer(
            "relative_position_index",
            relative_position_index(self.window, self.num_prefix_tokens).to(ref.device),
            persistent=False,
        )

    def extra_repr(self) -> str:
        return f"window={self.window}, num_prefix_tokens={self.num_prefix_tokens}"

    def record_grid(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Forward hook of the patch embedding: remember the token grid of this input."""
        if output.ndim == 4:  # NHWC, as timm's dynamic-size patch embedding returns it
            self.token_grid = (int(output.shape[1]), int(output.shape[2]))
        else:
            ph, pw = module.patch_size
            self.token_grid = (int(args[0].shape[-2]) // ph, int(args[0].shape[-1]) // pw)

    def _grid_of(self, n_tokens: int) -> tuple[int, int]:
        p = self.num_prefix_tokens
        for grid in (self.token_grid, self.window):
            if grid is not None and p + grid[0] * grid[1] == n_tokens:
                return grid
        raise ValueError(
            f"{n_tokens} tokens fit neither the last patch grid {self.token_grid} nor the "
            f"bias window {self.window} (with {p} prefix token(s)); run the tokens through "
            "the ViT's patch embedding first"
        )

    def _index(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        if grid == self.window:
            return self.relative_position_index
        key = (grid[0], grid[1], str(device))
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(grid, self.num_prefix_tokens).to(
                device
            )
        return self._index_cache[key]

    def position_bias(self, n_tokens: int) -> torch.Tensor:
        """``heads x N x N`` bias for ``n_tokens`` tokens of the current grid."""
        grid = self._grid_of(n_tokens)
        table = resample_table(self.relative_position_bias_table, self.window, grid)
        index = self._index(grid, table.device)
        bias = table[index.reshape(-1)].reshape(n_tokens, n_tokens, -1)
        return bias.permute(2, 0, 1)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("relative position bias attention is not causal (ViT encoder)")
        # In q's dtype: the fused kernels take a float mask only in the query's dtype.
        dev = x.device.type
        dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                 else self.qkv.weight.dtype)
        bias = self.position_bias(x.shape[1]).unsqueeze(0).to(dtype)  # broadcast over batch
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # True = attend, as scaled_dot_product_attention
                attn_mask = torch.zeros_like(attn_mask, dtype=bias.dtype).masked_fill(
                    ~attn_mask, float("-inf")
                )
            bias = bias + attn_mask
        return super().forward(x, attn_mask=bias)


def _layer_scale_slots(blk: nn.Module) -> tuple[str, str] | None:
    """Where ``blk`` keeps its branch scales: ``ls1``/``ls2`` (timm ViT) or ``gamma_1``/
    ``gamma_2`` (Eva)."""
    for slots in (("ls1", "ls2"), ("gamma_1", "gamma_2")):
        if all(hasattr(blk, a) for a in slots) and hasattr(blk, "norm1"):
            return slots
    return None


def _blocks(backbone: Backbone) -> nn.ModuleList:
    blocks = backbone.vit.blocks
    for i, blk in enumerate(blocks):
        if not hasattr(blk, "attn") or _layer_scale_slots(blk) is None:
            raise ValueError(
                f"block {i} ({type(blk).__name__}) is neither a timm ViT block (ls1/ls2) nor "
                "an Eva block (gamma_1/gamma_2): no LayerScale or relative position bias "
                "can be added"
            )
    return blocks


def add_layer_scale(backbone: Backbone, init_values: float) -> dict[str, int]:
    """Trainable LayerScale ``init_values`` in every block that has none.

    A block that already scales its branches (DeiT III's trained gamma_1/gamma_2, loaded
    into ``ls1.gamma``/``ls2.gamma``; an Eva block's ``gamma_1``/``gamma_2``) keeps its
    values.
    """
    added = kept = 0
    for blk in _blocks(backbone):
        ref = blk.norm1.weight
        dim = int(ref.shape[0])
        for slot in _layer_scale_slots(blk):  # type: ignore[union-attr]
            current = getattr(blk, slot)
            if isinstance(current, (LayerScale, nn.Parameter)):
                kept += 1
                continue
            if slot.startswith("gamma"):  # Eva: a bare parameter, None when absent
                if current is not None:
                    raise ValueError(f"unexpected {slot} value {type(current).__name__}")
                gamma = torch.full((dim,), float(init_values), device=ref.device, dtype=ref.dtype)
                setattr(blk, slot, nn.Parameter(gamma))
            else:
                if not isinstance(current, nn.Identity):
                    raise ValueError(f"unexpected {slot} module {type(current).__name__}")
                ls = LayerScale(dim, init_values=float(init_values))
                setattr(blk, slot, ls.to(device=ref.device, dtype=ref.dtype))
            added += 1
    return {"added": added, "kept": kept}


def has_rotary_position(backbone: Backbone) -> bool:
    """Whether the architecture encodes relative position itself (Eva's RoPE)."""
    return getattr(backbone.vit, "rope", None) is not None


def add_rel_pos_bias(backbone: Backbone, window: tuple[int, int]) -> int:
    """Replace every block's attention by a :class:`RelPosBiasAttention` over ``window``.

    Returns how many were replaced; blocks that already have one over the same window are
    left alone (building the fine-tuning model twice on one backbone is harmless).
    """
    vit = backbone.vit
    window = (int(window[0]), int(window[1]))
    replaced = 0
    for i, blk in enumerate(_blocks(backbone)):
        attn = blk.attn
        if isinstance(attn, RelPosBiasAttention):
            if attn.window != window:
                raise ValueError(
                    f"block {i} already has a relative position bias over {attn.window}, "
                    f"not {window}"
                )
            continue
        if type(attn) is not Attention:
            raise ValueError(
                f"block {i}'s attention is a {type(attn).__name__}, not timm's Attention: "
                "no relative position bias can be added"
            )
        new = RelPosBiasAttention(attn, window, backbone.num_prefix_tokens)
        vit.patch_embed.register_forward_hook(new.record_grid)
        blk.attn = new
        replaced += 1
    return replaced


def add_finetune_extras(
    backbone: Backbone,
    layer_scale_init: float | None,
    rel_pos_bias: bool,
    window: tuple[int, int],
) -> dict[str, Any]:
    """Give ``backbone`` the released fine-tuning ViT's LayerScale and relative position bias.

    ``layer_scale_init`` None or 0 adds no LayerScale (one the checkpoint has stays);
    ``window`` is the training crop's patch grid. A model with rotary position
    embeddings gets no relative position bias (recorded as skipped). What was done is recorded in
    ``backbone.meta.extra['fine_tune_extras']`` and returned.
    """
    done: dict[str, Any] = {"layer_scale_added": 0, "layer_scale_kept": 0,
                            "rel_pos_bias_window": None}
    if layer_scale_init:
        ls = add_layer_scale(backbone, layer_scale_init)
        done.update(layer_scale_added=ls["added"], layer_scale_kept=ls["kept"],
                    layer_scale_init=float(layer_scale_init))
    if rel_pos_bias and has_rotary_position(backbone):
        done["rel_pos_bias_skipped"] = (
            f"{type(backbone.vit).__name__} has its own rotary position embedding"
        )
    elif rel_pos_bias:
        add_rel_pos_bias(backbone, window)
        done["rel_pos_bias_window"] = list(window)
    # A second call on the same backbone finds its own LayerScale "kept": the first
    # call's record is the true one.
    backbone.meta.extra.setdefault("fine_tune_extras", done)
    return done
