"""Not tests: the reference runtimes and helpers the tests compare against (tiny models, PyTorch sources, the TF.js runtime)."""
