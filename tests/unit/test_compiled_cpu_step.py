"""What compiling a training step on the CPU changes, and what it must not.

Bilinear resizing inside a compiled CPU graph is one opaque operator whose forward and
backward are ATen's ``upsample_bilinear2d`` kernels (not inductor's index arithmetic and
scatter-add), and ``compile_model`` puts a CPU model's convolution weights in
channels-last order in place. Neither may change a number: the operator must equal
``F.interpolate`` bit for bit, forward and backward, in both memory layouts.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from single_thread import one_thread
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

from bench.models.layers import resize
from bench.models.resize_op import resize_bilinear
from bench.protocols import runtime
from bench.protocols.runtime import compile_supported

needs_compile = pytest.mark.skipif(not compile_supported(), reason="torch.compile unsupported")
LAYOUTS = [torch.contiguous_format, torch.channels_last]
# (input H x W, output H x W): the FPN's and the logits' upsampling, and a downsampling.
SIZES = [((5, 7), (16, 12)), ((16, 12), (5, 7)), ((8, 8), (32, 32))]


_one_thread = pytest.fixture(autouse=True)(one_thread)


def _map(hw: tuple[int, int], fmt: torch.memory_format, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *hw, generator=g).contiguous(memory_format=fmt)


@pytest.mark.parametrize("fmt", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_op_equals_interpolate_forward_and_backward(
    fmt: torch.memory_format, src: tuple[int, int], dst: tuple[int, int]
) -> None:
    x = _map(src, fmt).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    out = resize_bilinear(x, dst)
    ref = F.interpolate(ref_x, size=dst, mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)
    assert out.stride() == ref.stride()  # the layout ATen's kernel gives
    grad = _map(dst, fmt, seed=1)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(x.grad, ref_x.grad)


@pytest.mark.parametrize("fmt", LAYOUTS, ids=["nchw", "channels_last"])
def test_resize_op_registration_passes_torch_opcheck(fmt: torch.memory_format) -> None:
    """Schema, fake (meta) shapes and strides, autograd registration, AOT dispatch."""
    x = _map((5, 7), fmt).requires_grad_()
    torch.library.opcheck(resize_bilinear, (x, [16, 12]))


class _TopDown(nn.Module):
    """An FPN-like step: a coarse map upsampled onto a lateral, a head, the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.coarse = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.lateral = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        fine = self.lateral(x) + resize(self.coarse(x), x.shape[-2:])
        logits = resize(self.head(fine), label.shape[-2:])
        return F.cross_entropy(logits, label)


def _targets(gm: torch.fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


@needs_compile
def test_compiled_cpu_graph_resizes_with_atens_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    graphs: dict[str, torch.fx.GraphModule] = {}

    def capture(kind: str):  # noqa: ANN202
        def compiler(gm: torch.fx.GraphModule, example_inputs: list):  # noqa: ANN202
            graphs[kind] = gm
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=capture("forward"), bw_compiler=capture("backward"))
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TopDown()
    eager = _TopDown()
    eager.load_state_dict(model.state_dict())
    x = _map((8, 10), torch.contiguous_format)
    label = torch.randint(0, 5, (2, 16, 20), generator=torch.Generator().manual_seed(2))

    loss = runtime.compile_model(model)(x, label)
    loss.backward()
    ref = eager(x, label)
    ref.backward()

    ops = torch.ops.unipbench
    assert ops.resize_bilinear.default in _targets(graphs["forward"])
    assert ops.resize_bilinear_backward.default in _targets(graphs["backward"])
    index_ops = {torch.ops.aten._unsafe_index.Tensor, torch.ops.aten._unsafe_index_put.default,
                 torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default}  # fmt: skip
    for kind, gm in graphs.items():
        assert not index_ops & _targets(gm), f"{kind} graph gathers or scatters: {gm.graph}"
    # Same kernels, same numbers (the convolutions differ only by their weights' layout).
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


@needs_compile
def test_compile_model_puts_cpu_conv_weights_channels_last_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "eager")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    runtime.compile_model(model)
    assert list(model.parameters()) == params  # the optimiser's parameters, still the model's
    for p, v in zip(params, values, strict=True):
        assert torch.equal(p, v)
    conv = model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_compile
def test_compile_model_leaves_a_ddp_wrapped_models_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP laid its gradient buckets out for the weights it was given."""
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "eager")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        model = nn.parallel.DistributedDataParallel(nn.Conv2d(3, 4, 3))
        runtime.compile_model(model)
        assert model.module.weight.is_contiguous()
    finally:
        dist.destroy_process_group()
