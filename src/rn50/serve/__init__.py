"""Serving a trained model: `rn50 predict` (predict.py), `rn50 app` (app.py), `rn50 export`
(export.py) and the Hugging Face Space template they share (space_template/)."""
