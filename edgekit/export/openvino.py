"""ONNX -> OpenVINO IR (xml + bin) with ov.convert_model + ov.save_model; fp32 unless fp16 is asked for."""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
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
        with _planes_as_bytes(onnx_path) as src:
            model = ov.convert_model(str(src))
    except Exception as e:
        raise UnsupportedModelError(f"OpenVINO could not convert the ONNX model: {str(e).splitlines()[0][:300]}") from e
    xml = out_dir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=fp16)
    return xml


@contextlib.contextmanager
def _planes_as_bytes(onnx_path: Path) -> Iterator[Path]:
    """The ONNX file to convert: onnx_path, or a temporary copy whose bit planes are DequantizeLinear instead of Cast
    (qdq.planes_for_openvino: the converter would fold Cast into float32, 4 bytes per stored bit)."""
    import onnx

    from .qdq import planes_for_openvino

    proto = onnx.load(str(onnx_path), load_external_data=False)
    if not any(i.data_type == onnx.TensorProto.UINT8 and "__bp" in i.name for i in proto.graph.initializer):
        yield onnx_path
        return
    proto = onnx.load(str(onnx_path))
    planes_for_openvino(proto)
    with tempfile.TemporaryDirectory(prefix="edgekit_ov_") as d:
        dst = Path(d) / onnx_path.name
        large = proto.ByteSize() > 1_900_000_000
        onnx.save_model(proto, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
        yield dst
