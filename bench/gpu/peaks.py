"""Dense bf16/fp16 tensor-core peaks of known GPUs: the denominator of model FLOPs utilisation.

Values are NVIDIA's data-sheet figures for dense matrices (no 2:4 structured sparsity; the
data sheets print the sparse figure, twice these, with an asterisk), bf16 or fp16 inputs
with fp32 accumulation, which is what PyTorch's autocast matmuls use:

- A100 (SXM and PCIe): "BFLOAT16 Tensor Core 312 TFLOPS | 624 TFLOPS*" (A100 data sheet).
- H100 SXM: "BFLOAT16 Tensor Core 1,979 teraFLOPS*" -> 989.5 dense; H100 PCIe: 1,513* ->
  756.5 (H100 data sheet). Matches the 989.4 TFLOP/s dense BF16 matrix rate derived from
  the SXM5's 132 SMs at its boost clock.
- H200 (SXM): "BFLOAT16 Tensor Core 1,979 TFLOPS*" -> 989.5 (the same GH100 compute as
  an H100 SXM); H200 NVL: 1,671* -> 835.5 (H200 data sheet).
- L40S: "BFLOAT16 Tensor Core TFLOPS 362.05 | 733*" (L40S data sheet).
- A10: "BFLOAT16 Tensor Core 125 teraFLOPS | 250 teraFLOPS*" (A10 data sheet).
- GeForce RTX 4090: "Peak BF16 Tensor TFLOPS with FP32 Accumulate 165.2 | 330.4*" (Ada
  architecture white paper, appendix; GeForce parts run fp32-accumulate at half the
  fp16-accumulate rate, and autocast accumulates in fp32).

Other parts (H100 NVL, GH200, A10G, laptop GPUs ...) are not guessed: pass the peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    label: str
    tflops: float | None  # None: a known name whose peak is not tabulated here


# First match wins: the more specific names (NVL, PCIe) come before the family name.
# Word boundaries keep "A10" from matching "A100"/"A10G" and "H200" from matching "GH200".
_PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"\bH200\s+NVL\b", Peak("H200 NVL", 835.5)),
    (r"\bH200\b", Peak("H200 SXM", 989.5)),
    (r"\bH100\s+NVL\b", Peak("H100 NVL", None)),
    (r"\bH100\b.*\bPCIe\b", Peak("H100 PCIe", 756.5)),
    (r"\bH100\b", Peak("H100 SXM", 989.5)),
    (r"\bA100\b", Peak("A100", 312.0)),
    (r"\bL40S\b", Peak("L40S", 362.05)),
    (r"\bA10\b", Peak("A10", 125.0)),
    (r"\bRTX 4090\s*$", Peak("GeForce RTX 4090", 165.2)),
)

# Devices the fine-tuning MFU goal (>= 40 % bf16) is set for.
HOPPER_CLASS = ("H100 SXM", "H100 PCIe", "H200 SXM", "H200 NVL")


def match_peak(device_name: str) -> Peak | None:
    """The tabulated peak of ``torch.cuda.get_device_name()``'s answer, or None."""
    for pattern, peak in _PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(flops_per_step: float, step_seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak FLOP/s (a fraction)."""
    if step_seconds <= 0 or peak_tflops <= 0:
        raise ValueError(
            f"MFU needs a positive step time and peak, got {step_seconds} s, {peak_tflops}"
        )
    return flops_per_step / step_seconds / (peak_tflops * 1e12)
