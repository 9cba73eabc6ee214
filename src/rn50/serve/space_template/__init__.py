"""The files `rn50 export --space` copies into a Hugging Face Space folder.

`inference.py` (image checks, eval preprocessing, ONNX Runtime / PyTorch model, top-k) and
`ui.py` (the Gradio page) import nothing from rn50 and no torch at module level, so the Space
runs them as they are. rn50 uses the very same two files for `rn50 predict` and `rn50 app`:
one implementation of image validation and one UI, whichever way a model is served.
"""
