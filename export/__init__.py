"""The stages (model_src/stages.py) to engines: ONNX export (plain and quantized Q/DQ), the engine
builders (ONNX Runtime, AOTInductor, TensorRT), the build options, `verify` and its tolerances. The
manifest they write is runtime/manifest.py's (the contract the runtime reads)."""
