"""The export step: a trained ``TimesCLIPModel`` -> a bundle. :mod:`.graphs` cuts the model into
ONNX text and fusion graphs and the torch.export vision program; :mod:`.writer` checks every
piece against torch and writes the bundle atomically. Imports Darts and the model package."""
