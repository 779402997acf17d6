"""Float32 numerics of a process: which float32 matmuls and convolutions may use TF32.

`torch.set_float32_matmul_precision` governs matmuls only; cuDNN convolutions (most of this
network's FLOPs) keep their own setting, `torch.backends.cudnn.conv.fp32_precision`, which
defaults to TF32. So "highest" alone would still run convolutions in TF32. Both are set here
through torch's new per-backend API only: mixing it with the legacy `allow_tf32` flags makes
torch raise when either is read.

    matmul_precision   conv_precision=null gives   meaning
    highest            ieee                        IEEE float32 everywhere (the study's protocol)
    high / medium      tf32                        TF32 tensor cores for matmuls and convolutions

`conv_precision=tf32|ieee` overrides the convolutions' choice. On a CPU neither applies (float32
is float32); the settings are still recorded.
"""

from __future__ import annotations

import torch

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values
CONV_PRECISIONS = ("ieee", "tf32")


def conv_precision_for(matmul_precision: str, conv_precision: str | None = None) -> str:
    """The convolutions' float32 precision: as given, else IEEE exactly when matmuls are."""
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision={matmul_precision}: choose one of {', '.join(MATMUL_PRECISIONS)}")
    if conv_precision is None:
        return "ieee" if matmul_precision == "highest" else "tf32"
    if conv_precision not in CONV_PRECISIONS:
        raise ValueError(
            f"conv_precision={conv_precision}: choose one of {', '.join(CONV_PRECISIONS)} or null"
        )
    return conv_precision


def set_float32_precision(matmul_precision: str, conv_precision: str | None = None) -> dict[str, str]:
    """Apply both settings to this process; returns what is in effect (`effective_float32`)."""
    conv = conv_precision_for(matmul_precision, conv_precision)
    torch.set_float32_matmul_precision(matmul_precision)
    torch.backends.cudnn.conv.fp32_precision = conv
    return effective_float32()


def effective_float32() -> dict[str, str]:
    """What float32 matmuls and cuDNN convolutions run as now: "ieee" or "tf32" each (matmul:
    torch's own name for "medium", bf16x3, is kept as "bf16")."""
    matmul = torch.get_float32_matmul_precision()
    return {
        "matmul": {"highest": "ieee", "high": "tf32", "medium": "bf16"}[matmul],
        "conv": str(torch.backends.cudnn.conv.fp32_precision),
    }
