"""The page: inputs (upload, webcam, paste; model; detection options), results (overlay, mask, legend with class
toggles, label PNG, area table, timing) and the model status line."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from .inference import DemoInputError, ParseOutcome, Parser, area_rows, legend_html, read_photo, render, save_label_png
from .inference import summary as summary_line
from .models import ModelRegistry, ModelUnavailableError
from .video import MAX_VIDEO_SECONDS, parse_clip

TITLE = "SegFace face parsing"
INTRO = """# SegFace face parsing

Upload a photo, take one with the webcam, or paste one. The demo finds every face, crops it as the model was trained,
parses it into up to 19 classes (skin, brows, eyes, nose, lips, mouth, hair, ears, earrings, glasses, hat, neck,
necklace, cloth) and pastes the result back. [SegFace](https://arxiv.org/abs/2412.08647) (AAAI 2025), the official
weights of [kartiknarayan/SegFace](https://huggingface.co/kartiknarayan/SegFace) through segface-hf's `transformers`
port, on the CPU."""
CSS = """
.segface-legend { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
.segface-legend-item { display: flex; align-items: center; gap: 6px; }
.segface-legend-item.segface-hidden { opacity: 0.35; text-decoration: line-through; }
.segface-swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #777; border-radius: 2px; }
"""
DEFAULT_OPACITY = 0.55
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# Shows the download's and the conversion's progress bars on the page when a model is fetched at first use.
PROGRESS = gr.Progress(track_tqdm=True)


def photo_input(**kwargs) -> gr.Image:
    """A `gr.Image` that hands the uploaded file's path over unopened, so that `read_photo` can say what is wrong
    with a file that is not an image, is corrupt, or is too large (the stock preprocessing fails with a bare error).

    The instance's `preprocess` is wrapped rather than the class subclassed: Gradio writes a `.pyi` stub beside the
    module of every component subclass."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    stock = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        try:
            return stock(payload)
        except (OSError, ValueError, SyntaxError) as error:  # a pasted data URL that does not decode
            raise gr.Error(f"The pasted image could not be read ({error}); paste or upload it again.") from error

    image.preprocess = preprocess
    return image


def _error(message: str) -> gr.Error:
    return gr.Error(message, duration=None, title="Cannot parse this image")


def build_demo(registry: ModelRegistry, parser: Parser | None = None, examples_dir: Path = EXAMPLES_DIR) -> gr.Blocks:
    """Build the Blocks app around a model registry."""
    parser = parser or Parser()
    outputs_dir = Path(tempfile.mkdtemp(prefix="segface-demo-"))
    labels = [choice.label for choice in registry.choices]

    def status(model_label=None):
        state, text = registry.status(model_label)
        return text, gr.Timer(active=state == "loading")

    def parse(path, model_label, detect, whole_if_no_face, opacity, progress=PROGRESS):
        try:
            image = read_photo(path)
        except DemoInputError as error:
            raise _error(str(error)) from error
        try:
            loaded = registry.get(model_label)
        except ModelUnavailableError as error:
            raise _error(str(error)) from error
        try:
            outcome = parser.parse(image, loaded, detect=bool(detect), whole_if_no_face=bool(whole_if_no_face))
        except DemoInputError as error:
            raise _error(str(error)) from error
        overlay_image, mask = render(outcome, opacity)
        request_dir = Path(tempfile.mkdtemp(dir=outputs_dir))
        stem = Path(path).stem if path else "segface"
        label_png = save_label_png(outcome, request_dir, stem=stem[:60] or "segface")
        present = outcome.present
        return (
            overlay_image,
            mask,
            legend_html(outcome),
            gr.CheckboxGroup(choices=present, value=present),
            label_png,
            area_rows(outcome),
            summary_line(outcome),
            registry.status(model_label)[1],
            outcome,
        )

    def parse_video(path, model_label, progress=PROGRESS):
        try:
            loaded = registry.get(model_label)
            return parse_clip(path, loaded, parser.detector(), outputs_dir)
        except (DemoInputError, ModelUnavailableError) as error:
            raise gr.Error(str(error), duration=None, title="Cannot parse this video") from error

    def redraw(outcome: ParseOutcome | None, opacity, shown):
        if outcome is None:
            return gr.skip(), gr.skip(), gr.skip()
        overlay_image, mask = render(outcome, opacity, shown)
        return overlay_image, mask, legend_html(outcome, shown)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(INTRO)
        status_md = gr.Markdown(registry.status()[1], elem_id="segface-status")
        with gr.Row():
            with gr.Column(scale=1):
                photo = photo_input(label="Photo", sources=["upload", "webcam", "clipboard"], elem_id="segface-input",
                                    height=420)  # fmt: skip
                model = gr.Dropdown(
                    choices=labels,
                    value=labels[0],
                    label="Model",
                    info="CelebAMask-HQ (19 classes) or LaPa / Helen (11); MobileNet is the fastest.",
                )
                with gr.Row():
                    detect = gr.Checkbox(value=True, label="Find the faces",
                                         info="Untick for a photo that is already an aligned face crop.")  # fmt: skip
                    whole = gr.Checkbox(value=False, label="Parse the whole image when no face is found")
                run = gr.Button("Parse faces", variant="primary", elem_id="segface-run")
                examples = sorted(p for p in examples_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[photo], label="Public-domain examples")
            with gr.Column(scale=1):
                overlay_out = gr.Image(label="Overlay", type="pil", format="png", interactive=False,
                                       elem_id="segface-overlay", height=420)  # fmt: skip
                opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Overlay opacity")
                legend = gr.HTML(label="Legend", elem_id="segface-legend")
                shown = gr.CheckboxGroup(choices=[], value=[], label="Show classes", elem_id="segface-classes")
                summary_md = gr.Markdown(elem_id="segface-summary")
                with gr.Accordion("Colour mask, label map and areas", open=True):
                    mask_out = gr.Image(label="Colour mask", type="pil", format="png", interactive=False,
                                        elem_id="segface-mask", height=300)  # fmt: skip
                    label_file = gr.File(label="Label map (PNG: pixel value = class index)", elem_id="segface-labels")
                    areas = gr.Dataframe(headers=["class", "pixels", "% of image", "% of face area"],
                                         datatype=["str", "number", "number", "number"], interactive=False,
                                         label="Area per class", elem_id="segface-areas")  # fmt: skip
        with gr.Tab(f"Video (clips up to {MAX_VIDEO_SECONDS:.0f} s)"):
            gr.Markdown("Each face is followed through the clip, its crop steadied over time, and the parse drawn "
                        "over every frame; the clip's audio is kept. A CPU parses a few frames per second.")  # fmt: skip
            with gr.Row():
                clip = gr.Video(label="Clip", sources=["upload"], elem_id="segface-video-input")
                clip_out = gr.Video(label="Overlay", interactive=False, elem_id="segface-video-overlay")
            run_video = gr.Button("Parse video", variant="primary", elem_id="segface-video-run")
            clip_summary = gr.Markdown(elem_id="segface-video-summary")
        run_video.click(parse_video, inputs=[clip, model], outputs=[clip_out, clip_summary], api_name="parse_video",
                        concurrency_id="model")  # fmt: skip
        outcome_state = gr.State(None)
        timer = gr.Timer(1.0, active=False)

        results = [overlay_out, mask_out, legend, shown, label_file, areas, summary_md, status_md, outcome_state]
        run.click(parse, inputs=[photo, model, detect, whole, opacity], outputs=results, api_name="parse",
                  concurrency_id="model")  # fmt: skip
        opacity.release(redraw, inputs=[outcome_state, opacity, shown], outputs=[overlay_out, mask_out, legend],
                        api_visibility="private", concurrency_limit=None)  # fmt: skip
        shown.input(redraw, inputs=[outcome_state, opacity, shown], outputs=[overlay_out, mask_out, legend],
                    api_visibility="private", concurrency_limit=None)  # fmt: skip
        demo.load(status, inputs=[model], outputs=[status_md, timer], api_name="status", concurrency_limit=None)
        model.change(
            status, inputs=[model], outputs=[status_md, timer], api_visibility="private", concurrency_limit=None
        )
        timer.tick(status, inputs=[model], outputs=[status_md, timer], api_visibility="private", concurrency_limit=None)
    return demo
