"""An rn50 image classifier for Hugging Face Spaces, written by `rn50 export --space`.

    python app.py                    serve the page (Spaces set GRADIO_SERVER_NAME and _PORT)
    python app.py IMAGE... --json    print each image's top-5 as `rn50 predict --json` does

Needs only requirements.txt: no rn50 and, with model.onnx, no PyTorch.
"""

import argparse
import json
import sys
from pathlib import Path

from inference import Classifier, ImageError, ModelFileError

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"


def main(argv: list[str] | None = None) -> int:
    """`python app.py`: serve the page; `python app.py IMAGE... [--json]`: print each image's
    top-5."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="classify these and exit")
    parser.add_argument("--json", action="store_true", help="print JSON (the default for files)")
    parser.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--host", default=None, help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860)")
    args = parser.parse_args(argv)
    try:
        classifier = Classifier.from_folder(HERE)
    except ModelFileError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    if args.images:
        records = classifier.predict_files(args.images, args.top)
        print(json.dumps(records, indent=1, ensure_ascii=False))
        return 2 if any("error" in r for r in records) else 0

    from ui import build_demo, launch  # gradio: only when serving

    demo = build_demo(
        lambda path: classifier.predict_file(path, args.top),
        (ImageError,),
        sorted(str(p) for p in EXAMPLES.glob("*.jpg")),
        title="rn50 image classifier",
        description=classifier.info.summary(),
        k=args.top,
    )
    launch(demo, args.host, args.port, allowed=[str(EXAMPLES)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
