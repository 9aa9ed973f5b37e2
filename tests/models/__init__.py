"""Parity of every converted model against its original runtime (dlib, TF.js, PyTorch, ONNX Runtime), and LEAM on the real models."""
