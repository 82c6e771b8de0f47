"""GPU kernels: the CUDA sources (``*.cu``), their nvcc/NVRTC build (`.build`), the launch
logic shared with the host emulation (`.ops`) and the CuPy backend (`.backend`)."""
