"""The one Backbone interface every pre-training method is put behind.

A thin wrapper over a timm ViT-family model (``VisionTransformer`` with its DINOv2 and
register variants, ``Eva`` / EVA-02) that exposes multi-block feature maps through the
model's own ``forward_intermediates``, attention maps (probabilities or pre-softmax
logits) and the layer ids used for layer-wise learning-rate decay. Geometry (patch size,
prefix tokens, width) is read off the model. Any input whose sides are multiples of the
patch size is accepted: the models are built with ``dynamic_img_size``, so position
embeddings are interpolated on the fly when the grid differs.

Attention logits are computed by a function registered for the attention module's class
(:func:`register_attention_logits`): timm's ``Attention`` (fused qkv, optional q/k norm
and the fine-tuning relative position bias) and Eva's ``EvaAttention`` (fused or separate
q/k/v, q/v biases, RoPE on q and k) are built in. The function receives the module's own
call (its input and keyword arguments, e.g. Eva's ``rope``), captured by a pre-forward
hook while the model runs, so whatever the architecture feeds its attention is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# ImageNet statistics: what the RGB-pretrained checkpoints were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Infrared statistics of the UNIP protocol (replicated over three channels).
INFRARED_MEAN = (0.3801, 0.3801, 0.3801)
INFRARED_STD = (0.1871, 0.1871, 0.1871)

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
# Input-side parameters (layer id 0). ``rope`` holds Eva's rotary tables: buffers only in
# EVA-02, listed so a learnt variant would still count as an embedding.
_EMBED_NAMES = (
    "cls_token", "reg_token", "pos_embed", "patch_embed", "mask_token", "dist_token", "rope",
)


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


# ---------------------------------------------------------------------- attention logits
# (attention module, its input tokens, its keyword arguments) -> B x heads x N x N logits
AttentionLogits = Callable[[nn.Module, torch.Tensor, Mapping[str, Any]], torch.Tensor]
_ATTENTION_LOGITS: dict[type, AttentionLogits] = {}


def register_attention_logits(cls: type) -> Callable[[AttentionLogits], AttentionLogits]:
    """Decorator: ``fn`` computes the pre-softmax attention of ``cls`` modules (and of
    subclasses without a registration of their own)."""

    def _add(fn: AttentionLogits) -> AttentionLogits:
        _ATTENTION_LOGITS[cls] = fn
        return fn

    return _add


def attention_logits_fn(module: nn.Module) -> AttentionLogits:
    """The registered logits function of ``module``'s class (nearest in its MRO)."""
    for cls in type(module).__mro__:
        if cls in _ATTENTION_LOGITS:
            return _ATTENTION_LOGITS[cls]
    known = ", ".join(sorted(c.__name__ for c in _ATTENTION_LOGITS))
    raise TypeError(
        f"no attention-logits function is registered for {type(module).__name__} "
        f"({type(module).__module__}); known: {known}. Register one with "
        "bench.backbones.backbone.register_attention_logits"
    )


def _timm_attention_logits(
    attn: nn.Module, x: torch.Tensor, kwargs: Mapping[str, Any]
) -> torch.Tensor:
    """timm ``Attention``: q·k·d^-0.5 from the fused qkv (after q/k norm), plus the block's
    relative position bias when it has one (fine-tuning's, bench.models.vit_extras)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    position_bias = getattr(attn, "position_bias", None)
    return logits if position_bias is None else logits + position_bias(n).to(logits.dtype)


def _eva_attention_logits(
    attn: nn.Module, x: torch.Tensor, kwargs: Mapping[str, Any]
) -> torch.Tensor:
    """Eva's ``EvaAttention``: q and k as its forward makes them (fused qkv with q/v
    biases and no k bias, or separate projections; q/k norm), RoPE applied to the patch
    tokens of both, then q·k·d^-0.5."""
    import torch.nn.functional as F
    from timm.layers import apply_rot_embed_cat

    b, n, _ = x.shape
    heads = attn.num_heads
    if attn.qkv is not None:
        bias = None
        if attn.q_bias is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, bias).reshape(b, n, 3, heads, -1)
        q, k = qkv.permute(2, 0, 3, 1, 4).unbind(0)[:2]
    else:
        q = attn.q_proj(x).reshape(b, n, heads, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(b, n, heads, -1).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rope = kwargs.get("rope")
    if rope is not None:
        p, half = attn.num_prefix_tokens, bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], rope, half=half)], dim=2)
        k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], rope, half=half)], dim=2)
    return (q * attn.scale) @ k.transpose(-2, -1)


def _register_builtin_attention() -> None:
    from timm.layers import Attention
    from timm.models.eva import EvaAttention

    register_attention_logits(Attention)(_timm_attention_logits)
    register_attention_logits(EvaAttention)(_eva_attention_logits)


_register_builtin_attention()


class _AttentionCaptured(Exception):
    """Raised by the capture hook once the last wanted block's logits are computed, so the
    rest of that block and the blocks after it are not run."""


@dataclass(frozen=True)
class FeatureShape:
    """One returned feature level, as detectron2's ``ShapeSpec``: channels and stride."""

    channels: int
    stride: int


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
        for needed in ("forward_intermediates", "blocks", "patch_embed", "num_prefix_tokens"):
            if not hasattr(vit, needed):
                raise TypeError(
                    f"{type(vit).__name__} is not a timm ViT-family model: it has no "
                    f"{needed!r} (a Backbone needs forward_intermediates, blocks, "
                    "patch_embed and num_prefix_tokens)"
                )
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
        """Class token plus register / distillation tokens, ahead of the patch tokens."""
        return int(self.vit.num_prefix_tokens)

    def output_shape(self, layers: Sequence[int] | int = (-1,)) -> list[FeatureShape]:
        """Channels and stride of every map ``features(x, layers)`` returns, in order."""
        idx = _normalise_indices(layers, self.depth)
        return [FeatureShape(channels=self.embed_dim, stride=self.patch_size) for _ in idx]

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
        """Patch embedding + position embedding (+ prefix tokens): the input of block 0.

        (Eva's rotary table, which its blocks take as an argument, is not returned.)
        """
        v = self.vit
        x = v.patch_embed(x)
        x = v._pos_embed(x)
        if isinstance(x, tuple):  # Eva: (tokens, rotary table)
            x = x[0]
        elif hasattr(v, "patch_drop"):
            x = v.patch_drop(x)
        return v.norm_pre(x)

    def features(
        self, x: torch.Tensor, layers: Sequence[int] | int = (-1,), norm: bool = False
    ) -> list[torch.Tensor]:
        """Outputs of the given blocks as ``B x D x H/p x W/p`` maps, in the order asked.

        ``norm=True`` applies the final LayerNorm to each output. Blocks after the last
        requested one are not run.
        """
        self._check_input(x)
        idx = _normalise_indices(layers, self.depth)
        wanted = sorted(set(idx))
        maps = self.vit.forward_intermediates(
            x,
            indices=wanted,
            norm=norm,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        by_block = dict(zip(wanted, maps, strict=True))
        return [by_block[i] for i in idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's normalised feature map."""
        return self.features(x, [-1], norm=True)[0]

    @staticmethod
    def attention_logits(block: nn.Module, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Pre-softmax attention of ``block`` for its input tokens ``x`` (``kwargs``: what
        the block hands its attention besides the tokens, e.g. Eva's ``rope``)."""
        return attention_logits_fn(block.attn)(block.attn, block.norm1(x), kwargs)

    def attention(
        self, x: torch.Tensor, layers: Sequence[int] | int = (-1,), logits: bool = False
    ) -> list[torch.Tensor]:
        """Attention maps ``B x heads x N x N`` of the given blocks, prefix tokens included.

        Softmax probabilities by default; ``logits=True`` returns the pre-softmax logits
        (q·k·d^-0.5, with whatever position terms the architecture adds to q, k or the
        logits). The model runs through its own ``forward_intermediates`` and stops as soon
        as the last requested block's attention input is seen.
        """
        self._check_input(x)
        idx = _normalise_indices(layers, self.depth)
        last = max(idx)
        got: dict[int, torch.Tensor] = {}
        handles = []

        def capture(i: int, fn: AttentionLogits) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                tokens = args[0] if args else kwargs["x"]
                rest = {k: v for k, v in kwargs.items() if k != "x"}
                got[i] = fn(module, tokens, rest)
                # Under a JIT trace (FLOP counting) an exception aborts the tracer: there
                # the forward ends with ``stop_early`` after the last wanted block instead.
                if i == last and not torch.jit.is_tracing():
                    raise _AttentionCaptured

            return hook

        for i in sorted(set(idx)):
            attn = self.vit.blocks[i].attn
            hook = capture(i, attention_logits_fn(attn))
            handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            self.vit.forward_intermediates(
                x, indices=[last], stop_early=True, intermediates_only=True
            )
        except _AttentionCaptured:
            pass
        finally:
            for h in handles:
                h.remove()
        if last not in got:
            raise RuntimeError(
                f"block {last}'s attention module was never called by "
                f"{type(self.vit).__name__}.forward_intermediates"
            )
        return [got[i] if logits else got[i].softmax(dim=-1) for i in idx]

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
            "architecture": type(self.vit).__name__,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "mean": list(self.mean),
            "std": list(self.std),
            **self.meta.to_dict(),
        }
