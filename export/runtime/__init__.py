"""The deployment runtime: a bundle -> forecasts, with numpy, torch and onnxruntime only.
:mod:`.forecaster` (``RollingForecaster``), :mod:`.placement` (devices and ONNX Runtime
providers), :mod:`.vision` (windows -> images -> the ViT program) and :mod:`.csv_stream` (the
``stream`` command's CSV loop)."""
