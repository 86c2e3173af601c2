"""ONNX -> OpenVINO IR (xml + bin) with ov.convert_model + ov.save_model; fp32 unless fp16 is asked for."""
from __future__ import annotations

from pathlib import Path

from ..errors import MissingDependencyError, UnsupportedModelError


def convert(onnx_path: Path, out_dir: Path, fp16: bool = False) -> Path:
    """Write out_dir/model.xml (+ model.bin) and return the xml path."""
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - core dependency
        raise MissingDependencyError("openvino", "all") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:
        raise UnsupportedModelError(f"OpenVINO could not convert the ONNX model: {str(e).splitlines()[0][:300]}") from e
    xml = out_dir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=fp16)
    return xml
