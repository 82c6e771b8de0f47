"""GPU kernels: the CUDA sources (``*.cu``), their nvcc/NVRTC build (:mod:`.build`), the launch
logic shared with the host emulation (:mod:`.ops`) and the CuPy backend (:mod:`.backend`)."""
