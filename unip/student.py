"""The UNIP student: a randomly initialised ViT-T/S/B whose last block has the teacher's heads.

Fixed 2-D sin-cos position embeddings (CLS slot at zero, not trained), the same drop-path
rate in every block, MAE-style initialisation (xavier-uniform linears; the patch
projection's bias left at PyTorch's default), as in the UNIP release. Only the last
block's attention logits are distilled, so that block's projection and MLP and the final
norm get no gradient: they are frozen here so DDP sees no unused parameters and AdamW's
weight decay leaves them alone.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from bench.backbones.adapter import AdapterError, as_pair, get_adapter
from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD, Backbone, BackboneMeta
from unip.adapter import replace_last_attention

STUDENT_DROP_PATH = 0.1


def sincos_pos_embed(
    embed_dim: int, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """``1 x (prefix + h*w) x D`` 2-D sin-cos table; prefix rows are zero.

    First half of the channels encodes the column, second half the row (MAE's layout), each
    as [sin(pos * w_i), cos(pos * w_i)] with w_i = 10000^(-i / (D/4)).
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )

    def _one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([_one_axis(cols), _one_axis(rows)], dim=1)
    prefix = torch.zeros(num_prefix_tokens, embed_dim, dtype=torch.float64)
    return torch.cat([prefix, table]).float()[None]


def set_constant_drop_path(vit: nn.Module, rate: float) -> None:
    """Every block drops its residual branches with the same ``rate`` (timm ramps it up)."""
    for blk in vit.blocks:
        blk.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
        blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()


def init_mae_style(vit: nn.Module) -> None:
    """Xavier-uniform linears and patch projection, zero linear biases, unit norms,
    CLS ~ N(0, .02). The patch projection's bias keeps PyTorch's Conv2d default
    (uniform in +-1/sqrt(fan_in)): the release's initialisation never touches it."""
    for m in vit.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    proj = vit.patch_embed.proj
    proj.reset_parameters()  # PyTorch's default for the bias, whatever timm did before
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))  # a linear map of a patch
    nn.init.normal_(vit.cls_token, std=0.02)


def untrained_parameters(vit: nn.Module) -> list[str]:
    """Names of the parameters the attention-logit loss cannot reach."""
    last = len(vit.blocks) - 1
    reached_in_last = ("norm1.", "attn.qkv.", "attn.q_norm.", "attn.k_norm.")
    names = []
    for name, _ in vit.named_parameters():
        if name == "pos_embed":
            names.append(name)
        elif name.startswith(f"blocks.{last}."):
            if not name[len(f"blocks.{last}.") :].startswith(reached_in_last):
                names.append(name)
        elif not name.startswith(("blocks.", "cls_token", "patch_embed.")):
            names.append(name)  # final norm, heads
    return names


def build_student(
    size: str,
    last_heads: int,
    img_size: int = 224,
    depth: int | None = None,
    drop_path_rate: float = STUDENT_DROP_PATH,
) -> Backbone:
    """A fresh UNIP student (``depth`` below 12 only for tests), frozen where no loss reaches."""
    adapter = get_adapter("unip")
    try:  # the sizes the UNIP adapter declares are the students'
        size = adapter.canonical_size(size)
    except AdapterError:
        letters = "/".join(s.letter for s in adapter.sizes)
        raise ValueError(f"UNIP students are ViT-{letters}; got size {size!r}") from None
    vit = adapter.build_vit(size, img_size, drop_path_rate=0.0, depth=depth)
    vit = replace_last_attention(vit, int(last_heads))
    set_constant_drop_path(vit, drop_path_rate)
    init_mae_style(vit)
    grid = tuple(vit.patch_embed.grid_size)
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed(vit.embed_dim, grid, vit.num_prefix_tokens))
    frozen = set(untrained_parameters(vit))
    for name, p in vit.named_parameters():
        p.requires_grad_(name not in frozen)
    meta = BackboneMeta(
        adapter="unip",
        size=size,
        random_init=True,
        pretrain_img_size=as_pair(img_size)[0],
        extra={"last_heads": int(last_heads)},
    )
    return Backbone(vit, meta, mean=INFRARED_MEAN, std=INFRARED_STD)


class LastBlockLogits(nn.Module):
    """The student as the distillation sees it: images -> last block's attention logits.

    A module of its own so that DDP wraps the call that produces the loss's input.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.attention(x, [-1], logits=True)[0]
