"""The files `rn50 export --space` copies into a Hugging Face Space folder.

`inference.py` (eval preprocessing, ONNX Runtime / PyTorch model, top-k) and `ui.py` (the
Gradio page) import nothing from rn50 and no torch at module level, so the Space runs them as
they are; beside them goes a copy of rn50's image reader (rn50/data/image.py, as image.py),
which inference.py imports from rn50 inside the package and from the folder in the Space.
rn50 uses the very same files for `rn50 predict` and `rn50 app`: one image reader (shared
with training) and one UI, whichever way a model is served.
"""
