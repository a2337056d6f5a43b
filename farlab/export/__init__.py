"""Ship a finished student: ``python -m farlab.export <run dir> --format onnx|gguf`` (docs/export.md).

Each format writes ``<run dir>/export/<format>/`` once, atomically: the model file, ``parity.json`` (the check that
the exported model computes what PyTorch computes) and ``provenance.json`` (which run, config and metrics it came
from). Nothing else in the run dir changes.
"""
