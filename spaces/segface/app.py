"""SegFace face parsing demo (Gradio): `python spaces/segface/app.py [--port 7860] [--host 127.0.0.1] [--model M]`.

The model comes from `--model` or `SEGFACE_MODEL` (a converted folder, a Hub repo id, an official variant such as
`mobilenet_celeba_512`, or several separated by commas); by default the official MobileNet weights, downloaded from
`kartiknarayan/SegFace` and converted on first start. When no model can be reached the page still starts and says
what is missing. Other settings: `SEGFACE_CONCURRENCY` (parses at once, default 1), `SEGFACE_QUEUE_SIZE` (default
16), `SEGFACE_MAX_MEGAPIXELS` (default 40), `SEGFACE_CACHE` (converted official weights), `GRADIO_SERVER_NAME` /
`GRADIO_SERVER_PORT` (as `--host` / `--port`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# No usage statistics, version checks or Hub telemetry: the demo runs offline and on private machines alike.
for _key, _value in {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)
# The Space ships `segface_hf` and `segface_demo` beside this file.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise SystemExit(f"app.py: error: {name}={value!r} is not an integer.") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1; Spaces set GRADIO_SERVER_NAME=0.0.0.0)")  # fmt: skip
    parser.add_argument("--port", type=int, default=_int_env("GRADIO_SERVER_PORT", 7860), help="port (default 7860)")
    parser.add_argument("--model", default=None, help="overrides SEGFACE_MODEL (folder, Hub id or official variant)")
    parser.add_argument("--concurrency", type=int, default=_int_env("SEGFACE_CONCURRENCY", 1),
                        help="parses that run at the same time (default 1 on a CPU Space)")  # fmt: skip
    parser.add_argument("--queue-size", type=int, default=_int_env("SEGFACE_QUEUE_SIZE", 16),
                        help="requests that may wait in the queue (default 16)")  # fmt: skip
    return parser


def create_demo(model: str | None = None, concurrency: int = 1, queue_size: int = 16, preload: bool = True):
    """Build the queued app: returns `(demo, registry)`. The default model loads in the background."""
    from segface_demo.models import ModelRegistry
    from segface_demo.ui import build_demo

    if concurrency < 1 or queue_size < 1:
        raise ValueError("concurrency and queue size must be at least 1")
    registry = ModelRegistry(model if model is not None else os.environ.get("SEGFACE_MODEL"))
    if preload:
        registry.preload_default()
    demo = build_demo(registry)
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return demo, registry


def theme():
    """The default theme with system fonts, so that the page loads nothing from outside."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])  # fmt: skip


def launch(demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the app: local only by default, no share link, no server-side rendering, errors shown on the page."""
    from segface_demo.ui import CSS

    return demo.launch(server_name=host, server_port=port, show_error=True, max_file_size="50mb", share=False,
                       ssr_mode=False, theme=theme(), css=CSS, footer_links=["api", "settings"],
                       prevent_thread_lock=not block, quiet=not block)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        demo, registry = create_demo(args.model, args.concurrency, args.queue_size)
    except ValueError as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    print(
        f"SegFace demo: default model {registry.default.label} ({registry.default.kind}: {registry.default.location})"
    )
    launch(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
