"""Dense peak TFLOP/s per GPU and precision, for MFU.

NVIDIA's datasheet (spec) numbers without sparsity, not measured ones. The H200 has the H100
SXM's tensor cores and clocks (only memory differs). The PCIe and NVL boards of the H100/H200
have lower peaks and are not in the table: an unknown GPU gives no MFU rather than a wrong one
(`--peak-tflops` supplies one).
"""

from __future__ import annotations

H100_SXM = {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}
DENSE_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": H100_SXM,
    "H200 SXM": H100_SXM,
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},  # SXM4 and PCIe share the spec peaks
}


def gpu_model(device_name: str) -> str | None:
    """The table's key for torch.cuda.get_device_name(), or None when it is not in the table."""
    name = device_name.upper()
    if "A100" in name:
        return "A100"
    if "PCIE" in name or "NVL" in name:  # H100/H200 boards with other clocks and power limits
        return None
    if "H100" in name:
        return "H100 SXM"
    if "H200" in name:
        return "H200 SXM"
    return None


def peak_tflops(device_name: str, math: str, given: float | None = None) -> float | None:
    """The dense peak of `math` (bf16, tf32 or fp32) on this device; `given` overrides it."""
    if given:
        return given
    model = gpu_model(device_name)
    return DENSE_PEAK_TFLOPS[model].get(math) if model else None


def mfu(images_per_second: float, gflop_per_image: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: achieved training FLOP/s over the peak of the precision that ran."""
    if not peak:
        return None
    return images_per_second * gflop_per_image / (peak * 1e3)
