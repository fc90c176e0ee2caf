"""The one Backbone interface every pre-training method is put behind.

A thin wrapper over timm's ``VisionTransformer`` that exposes multi-block feature maps,
attention maps (probabilities or pre-softmax logits) and the layer ids used for
layer-wise learning-rate decay. Any input whose sides are multiples of the patch size
is accepted: position embeddings are interpolated on the fly when the grid differs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

# ImageNet statistics: what the RGB-pretrained checkpoints were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Infrared statistics of the UNIP protocol (replicated over three channels).
INFRARED_MEAN = (0.3801, 0.3801, 0.3801)
INFRARED_STD = (0.1871, 0.1871, 0.1871)

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED_NAMES = ("cls_token", "reg_token", "pos_embed", "patch_embed", "mask_token", "dist_token")


@dataclass
class BackboneMeta:
    """Where a backbone's weights came from; stored with every result."""

    adapter: str
    size: str
    variant: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_format: str | None = None
    random_init: bool = True
    pretrain_img_size: int = 224
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _normalise_indices(layers: Sequence[int] | int, depth: int) -> list[int]:
    """0-based block indices; negatives count from the end. Order and repeats are kept."""
    if isinstance(layers, int):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("no block indices given: name at least one block (e.g. [-1])")
    out = []
    for i in layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise IndexError(f"block index {i} is out of range for a ViT of depth {depth}")
        out.append(j)
    return out


class Backbone(nn.Module):
    """A ViT behind one interface: ``features``, ``attention``, ``layer_id``."""

    def __init__(
        self,
        vit: nn.Module,
        meta: BackboneMeta,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.vit = vit
        self.meta = meta
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    # ------------------------------------------------------------------ geometry
    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_heads(self) -> list[int]:
        """Heads of every block (UNIP students' last block may differ from the rest)."""
        return [int(b.attn.num_heads) for b in self.vit.blocks]

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    # ------------------------------------------------------------------ forward parts
    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 4:
            raise ValueError(f"expected a B x C x H x W batch, got shape {tuple(x.shape)}")
        p = self.patch_size
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {p}")
        return h // p, w // p

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding (+ prefix tokens): the input of block 0."""
        v = self.vit
        x = v.patch_embed(x)
        x = v._pos_embed(x)
        x = v.patch_drop(x)
        return v.norm_pre(x)

    def _to_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens :]
        b, _, d = x.shape
        return x.transpose(1, 2).reshape(b, d, grid[0], grid[1])

    def features(
        self, x: torch.Tensor, layers: Sequence[int] | int = (-1,), norm: bool = False
    ) -> list[torch.Tensor]:
        """Outputs of the given blocks as ``B x D x H/p x W/p`` maps, in the order asked.

        ``norm=True`` applies the final LayerNorm to each output. Blocks after the last
        requested one are not run.
        """
        grid = self._check_input(x)
        idx = _normalise_indices(layers, self.depth)
        wanted = set(idx)
        last = max(idx)
        t = self.tokens(x)
        got: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.vit.blocks[: last + 1]):
            t = blk(t)
            if i in wanted:
                got[i] = self.vit.norm(t) if norm else t
        return [self._to_map(got[i], grid) for i in idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's normalised feature map."""
        return self.features(x, [-1], norm=True)[0]

    @staticmethod
    def attention_logits(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax attention q·k·d^-0.5 of ``block`` for its input tokens ``x``, plus the
        block's relative position bias when it has one (fine-tuning's, bench.models.vit_extras)."""
        attn = block.attn
        b, n, _ = x.shape
        h = block.norm1(x)
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        position_bias = getattr(attn, "position_bias", None)
        return logits if position_bias is None else logits + position_bias(n).to(logits.dtype)

    def attention(
        self, x: torch.Tensor, layers: Sequence[int] | int = (-1,), logits: bool = False
    ) -> list[torch.Tensor]:
        """Attention maps ``B x heads x N x N`` of the given blocks, prefix tokens included.

        Softmax probabilities by default; ``logits=True`` returns q·k·d^-0.5 instead.
        """
        self._check_input(x)
        idx = _normalise_indices(layers, self.depth)
        wanted = set(idx)
        last = max(idx)
        t = self.tokens(x)
        got: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.vit.blocks[: last + 1]):
            if i in wanted:
                a = self.attention_logits(blk, t)
                got[i] = a if logits else a.softmax(dim=-1)
            if i < last:
                t = blk(t)
        return [got[i] for i in idx]

    # ------------------------------------------------------------------ optimisation
    def layer_id(self, param_name: str) -> int:
        """Layer id for layer-wise lr decay: embeddings 0, block i -> i+1, else depth+1.

        Accepts names with any prefix (``backbone.vit.blocks.3.attn.qkv.weight``).
        """
        m = _BLOCK_RE.search(param_name)
        if m:
            return int(m.group(1)) + 1
        leaf = param_name.split("vit.", 1)[-1] if "vit." in param_name else param_name
        if any(leaf == e or leaf.startswith(e + ".") for e in _EMBED_NAMES):
            return 0
        return self.depth + 1

    def describe(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "mean": list(self.mean),
            "std": list(self.std),
            **self.meta.to_dict(),
        }
