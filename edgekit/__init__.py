"""edgekit: compress a PyTorch model, export it to ONNX Runtime / OpenVINO / LiteRT with validation, and profile it."""
__version__ = "0.1.0"
