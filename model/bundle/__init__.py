"""Model bundles: the manifest (torch-free), the model configuration, the loaded torch bundle, the ONNX backend."""
