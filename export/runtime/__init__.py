"""The deployment runtime: a bundle -> forecasts, with numpy, numba and onnxruntime (plus torch
on the torch vision path). :mod:`.forecaster` (``RollingForecaster``), its two engines
:mod:`.onnx_engine` (no torch) and :mod:`.torch_engine` (their common part: :mod:`.engine`),
:mod:`.placement` (devices and ONNX Runtime providers), :mod:`.vision` (windows -> images ->
the torch ViT program) and :mod:`.csv_stream` (the ``stream`` command's CSV loop)."""
