"""`rn50 app`: the Gradio page over a checkpoint, served on 127.0.0.1 unless told otherwise."""

import atexit
import shutil
import tempfile
from pathlib import Path

from rn50.errors import UserError
from rn50.serve.predict import ImageError, Predictor, write_examples


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    k: int = 5,
) -> None:
    """Load the checkpoint, write the example photos, serve until interrupted."""
    predictor = Predictor.from_checkpoint(checkpoint, device)  # bad file: one line, exit 2
    from rn50.serve.space_template.ui import build_demo, launch  # imports gradio: only here

    # The examples are generated from scikit-image's bundled photos at every start, so the
    # repository holds no binaries; Gradio serves them only from this folder.
    examples_dir = Path(tempfile.mkdtemp(prefix="rn50-examples-"))
    atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    examples = [str(p) for p in write_examples(examples_dir)]
    demo = build_demo(
        lambda path: predictor.predict_file(path, k),
        (ImageError,),
        examples,
        title="rn50 image classifier",
        description=predictor.info.summary(),
        k=k,
    )
    try:
        launch(demo, host, port, allowed=[str(examples_dir)])
    except OSError as e:  # Gradio: "Cannot find empty port ..." when the port is taken
        reason = str(e).split(". ")[0]  # Gradio's first sentence; the rest names its own API
        raise UserError(
            f"cannot serve on {host}:{port} ({reason}); choose another --port"
        ) from None
