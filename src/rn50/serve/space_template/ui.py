"""The Gradio page: upload or paste a photo, see the top-5 classes with their confidences.

Used by `rn50 app` and, copied as it is, by the Hugging Face Space (no rn50 import here).
"""

import base64
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence

# Gradio otherwise reports usage to its servers; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

log = logging.getLogger("rn50.ui")
STATUS_ID = "rn50-status"  # element ids the browser tests look for
LABELS_ID = "rn50-labels"
IMAGE_ID = "rn50-image"


def upload_image(**kwargs) -> gr.Image:
    """gr.Image whose event function receives the uploaded file's path, undecoded.

    gr.Image opens every upload with Pillow before the event function runs, so a file that is
    not an image, or a 400-megapixel one, would fail inside Gradio with a bare "Error"; with
    this preprocess the classifier's own checks run and say what is wrong. (Replaced on the
    instance: a gr.Image subclass would make Gradio write a .pyi stub beside this file.)
    """
    image = gr.Image(type="filepath", **kwargs)

    def preprocess(payload) -> str | bytes | None:
        if payload is None:
            return None
        if payload.path:
            return payload.path
        if payload.url and payload.url.startswith("data:"):  # a pasted image may come inline
            return base64.b64decode(payload.url.partition(",")[2])
        return None

    image.preprocess = preprocess
    return image


def label_dict(predictions: Sequence) -> dict[str, float]:
    """{label: probability} for gr.Label; ImageNet repeats some names (two "crane"s, two
    "maillot"s), so a repeated name gets its class id to keep both entries."""
    seen = [p.name for p in predictions]
    return {
        (f"{p.name} ({p.wnid})" if seen.count(p.name) > 1 else p.name): p.probability
        for p in predictions
    }


def theme() -> gr.themes.Base:
    # System fonts: the default theme fetches web fonts, which an offline machine cannot.
    """Gradio's default theme with the system's fonts (no web fonts: it works offline)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def build_demo(
    classify: Callable[[str | bytes], tuple[list, str]],
    user_errors: tuple[type[Exception], ...],
    examples: Sequence[str] = (),
    title: str = "rn50",
    description: str = "",
    k: int = 5,
) -> gr.Blocks:
    """The page. `classify(path or bytes) -> (top-k predictions, note)` raises one of `user_errors`
    with a one-line message for a file it cannot classify; that message is shown in place
    of the labels, and the next upload works as before."""

    def run(path: str | bytes | None):
        if not path:
            return None, ""
        try:
            predictions, note = classify(path)
        except user_errors as e:
            return None, f"**Cannot classify this file:** {e}"
        except Exception:  # keep serving: log it for the operator, say so to the user
            what = path if isinstance(path, str) else f"a pasted image of {len(path)} bytes"
            log.exception("classifying %s failed", what)
            return None, "**Something went wrong while classifying this file.** Try another one."
        top = predictions[0]
        status = f"Top-1: **{top.name}** ({top.wnid}), {top.probability:.1%}"
        return label_dict(predictions), status + (f" — {note}" if note else "")

    # Uploads are copied into Gradio's cache; a server that runs for weeks must not keep them.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {title}\n{description}")
        with gr.Row():
            with gr.Column():
                image = upload_image(
                    label="Photo (upload, drop or paste)",
                    sources=["upload", "clipboard"],
                    elem_id=IMAGE_ID,
                )
            with gr.Column():
                labels = gr.Label(num_top_classes=k, label=f"Top-{k}", elem_id=LABELS_ID)
                status = gr.Markdown(elem_id=STATUS_ID)
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=[image], label="Examples")
        image.change(run, inputs=image, outputs=[labels, status], api_name="predict")
    return demo


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def launch(demo: gr.Blocks, host: str | None, port: int | None, allowed: Sequence[str] = ()):
    """Serve on host:port (None: Gradio's GRADIO_SERVER_NAME/PORT or 127.0.0.1:7860) until
    Ctrl+C or SIGTERM; never through a public share link."""
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, docker stop, a Space restart) would end the process on the spot;
        # as an interrupt, Gradio closes the server and the caller's clean-up runs.
        signal.signal(signal.SIGTERM, _interrupt)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,  # client-side rendering: no Node.js needed
        theme=theme(),
        max_file_size="64mb",
        allowed_paths=list(allowed),
        show_error=False,
    )
