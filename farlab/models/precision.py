"""Per-side model dtypes (``model.teacher.dtype``, ``model.student.dtype``): a 3B teacher for inference in
bfloat16 while the student trains in float32. One registry, so a typo gets the valid names."""

from __future__ import annotations

from typing import Any

import torch

from farlab.registry import Registry, unknown_choice_message

DEFAULT_DTYPE = "float32"
MODEL_DTYPES: Registry[torch.dtype] = Registry("model dtype")
MODEL_DTYPES.add("float32", torch.float32)
MODEL_DTYPES.add("bfloat16", torch.bfloat16)
MODEL_DTYPES.add("float16", torch.float16)


def torch_dtype(spec: Any) -> torch.dtype:
    """The torch dtype a :class:`~farlab.config.ModelSpec` loads in (float32 when the spec has no ``dtype``)."""
    return MODEL_DTYPES.get(str(spec.get("dtype", DEFAULT_DTYPE) or DEFAULT_DTYPE))


def dtype_problems(role: str, spec: Any) -> list[str]:
    name = spec.get("dtype", DEFAULT_DTYPE)
    if name not in MODEL_DTYPES:
        return [unknown_choice_message(f"model.{role}.dtype", name, MODEL_DTYPES.names())]
    return []
