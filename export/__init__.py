"""Stage wrappers, ONNX export, engine builders (ORT, AOTInductor, TensorRT) and the manifest."""
