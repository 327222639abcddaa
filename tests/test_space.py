"""The demo Space end to end through `gradio_client`: one face, two faces, no face, bad files, a missing model,
and `python spaces/segface/app.py` starting with no arguments where no model can be reached.

The helpers at the top (fixture model, serving the app in this process) are shared with test_space_browser.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT, parity_module, require_shared, tiny_config, write_clip
from hub_standin import hub_standin  # noqa: F401  (the fixture)

SPACE_DIR = REPO_ROOT / "spaces" / "segface"
EXAMPLES_DIR = SPACE_DIR / "examples"
# Gradio must not phone home from the tests; set before gradio is imported anywhere.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def converted_fixture_model(directory) -> str:
    """The MobileNet parity fixture (original release format, random weights) converted with the package."""
    from segface_hf.release.conversion import convert_original_checkpoint

    fixture = parity_module().load_fixture(require_shared("parity", "fixtures", "mobilenet_celeba_512"))
    torch.save(fixture.checkpoint, directory / "model_299.pt")
    convert_original_checkpoint(directory / "model_299.pt", "mobilenet_celeba_512", directory / "segface-fixture")
    return str(directory / "segface-fixture")


def space_app():
    """The Space's `app.py` as a module (it puts `spaces/segface` on `sys.path` for `segface_demo`)."""
    if "segface_space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("segface_space_app", SPACE_DIR / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["segface_space_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["segface_space_app"]


def wait_until_served(url: str, timeout: float = 120.0, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the app exited with code {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not serve {url} within {timeout:.0f} s")


def serve_demo(model: str):
    """Serve the demo with `model` on a free local port in this process; returns `(demo, url)`."""
    app = space_app()
    demo, registry = app.create_demo(model=model, preload=False)
    port = free_port()
    app.launch(demo, "127.0.0.1", port, block=False)
    url = f"http://127.0.0.1:{port}/"
    wait_until_served(url)
    return demo, registry, url


# ------------------------------------------------------------------------------------------------------------ tests

MODEL_LABEL = "Local model: segface-fixture"
MODEL_DEFAULT_LABEL = "CelebAMask-HQ, 19 classes · MobileNetV3 · 512px (fastest, reported mean F1 87.91)"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo with the fixture model, offline (official variants are not cached, so they cannot be loaded)."""
    import huggingface_hub.constants

    model = converted_fixture_model(tmp_path_factory.mktemp("space-model"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setenv("SEGFACE_CACHE", str(tmp_path_factory.mktemp("space-cache")))
        demo, registry, url = serve_demo(model)
        yield registry, url
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1], verbose=False, download_files=True)


def _parse(client, path, model=MODEL_LABEL, detect=True, whole=False, opacity=0.55):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), model, detect, whole, opacity, api_name="/parse")


def _check_result(result, image_path, num_faces):
    overlay_path, mask_path, legend, classes, label_path, areas, summary, status = result
    photo = PIL.Image.open(image_path)
    label_png = PIL.Image.open(label_path)
    assert label_png.mode == "P" and label_png.size == photo.size
    labels = np.asarray(label_png)
    assert labels.max() <= 18
    for picture in (overlay_path, mask_path):
        assert PIL.Image.open(picture).size == photo.size
    faces = "face" if num_faces == 1 else "faces"
    assert f"**{num_faces} {faces} found and parsed**" in summary and MODEL_LABEL in summary
    assert "ready" in status
    # the area table, the legend and the class toggles agree with the label PNG
    counts = np.bincount(labels.ravel(), minlength=19)
    table = {row[0]: row for row in areas["data"]}
    names = [name for name, _ in classes["choices"]]
    assert list(table) == names and set(classes["value"]) == set(names)
    from segface_hf import CELEBAMASK_HQ_LABELS

    expected = [CELEBAMASK_HQ_LABELS[i] for i in range(1, 19) if counts[i]]
    assert names == expected
    for name, row in table.items():
        assert row[1] == counts[CELEBAMASK_HQ_LABELS.index(name)]
        assert row[2] == pytest.approx(100 * row[1] / labels.size, abs=0.01)
        assert f'data-label="{name}"' in legend
    assert sum(row[3] for row in table.values()) == pytest.approx(100, abs=0.1)
    return labels


def test_one_face(client):
    labels = _check_result(_parse(client, EXAMPLES_DIR / "grace_hopper.jpg"), EXAMPLES_DIR / "grace_hopper.jpg", 1)
    # The face (MTCNN: box x 174..356, y 120..340) was cropped as CelebA-HQ frames faces (a tilted square of about
    # 4 eye distances, here x 80..454, y 12..386), parsed (random weights: mostly foreground) and pasted back;
    # outside the crop everything is background.
    assert (labels[150:300, 200:330] > 0).mean() > 0.75
    assert (labels[:, :75] == 0).all() and (labels[395:] == 0).all()


def test_two_faces(client):
    path = EXAMPLES_DIR / "two_faces.jpg"  # grace_hopper.jpg at x 0..512, astronaut at x 512..1024
    labels = _check_result(_parse(client, path), path, 2)
    assert (labels[150:300, 200:330] > 0).mean() > 0.75  # the left face
    assert (labels[110:210, 700:770] > 0).mean() > 0.75  # the right face
    assert (labels[:, 460:645] == 0).all()  # between the two crops: background


def test_a_sideways_face_shows_its_roll(client, tmp_path):
    path = tmp_path / "sideways.png"
    PIL.Image.open(EXAMPLES_DIR / "grace_hopper.jpg").transpose(PIL.Image.Transpose.ROTATE_90).save(path)
    result = _parse(client, path)
    _check_result(result, path, 1)
    summary = result[6]
    roll = int(summary.split("Face 1 is rolled by ")[1].split("°")[0])
    assert abs(roll + 90) < 15 and "(found turned-270)" in summary


def test_no_face(client, tmp_path):
    from gradio_client.exceptions import AppError

    ramp = np.linspace(0, 255, 320, dtype=np.uint8)
    path = tmp_path / "gradient.png"
    PIL.Image.fromarray(np.stack([np.tile(ramp, (240, 1))] * 3, axis=-1)).save(path)
    with pytest.raises(AppError, match="No face found in this 320x240 photo"):
        _parse(client, path)
    result = _parse(client, path, whole=True)
    assert "the whole image parsed as one face crop" in result[6]
    assert PIL.Image.open(result[4]).size == (320, 240)


def test_aligned_crop_without_detection(client):
    result = _parse(client, EXAMPLES_DIR / "astronaut.jpg", detect=False)
    assert "the whole image parsed as one face crop" in result[6]


def test_corrupt_and_foreign_files(client, tmp_path):
    from gradio_client.exceptions import AppError

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((EXAMPLES_DIR / "grace_hopper.jpg").read_bytes()[:20_000])
    with pytest.raises(AppError, match="truncated.jpg is corrupt or truncated"):
        _parse(client, truncated)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(AppError, match="notes.png is not an image the demo can read"):
        _parse(client, text)


def test_oversized_image(client, tmp_path):
    from gradio_client.exceptions import AppError

    path = tmp_path / "huge.png"
    PIL.Image.new("L", (8000, 6000)).save(path)  # 48 megapixels, a few kB of PNG
    with pytest.raises(AppError, match=r"8000x6000 pixels \(48 megapixels\); the demo accepts up to 40"):
        _parse(client, path)


def test_unreachable_model_says_how_to_point_the_demo(served, client):
    """Offline, an official variant that is not cached cannot be fetched: the error says how to point the demo."""
    from gradio_client.exceptions import AppError

    registry, _ = served
    label = next(choice.label for choice in registry.choices if choice.key == "swinb_lapa_448")
    with pytest.raises(AppError, match="could not be fetched from kartiknarayan/SegFace.*SEGFACE_MODEL="):
        _parse(client, EXAMPLES_DIR / "grace_hopper.jpg", model=label)


def test_app_starts_without_a_model_and_says_what_is_missing(tmp_path):
    """`python spaces/segface/app.py`, no arguments, offline: the page is served and states what is missing."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, **OFFLINE_ENV, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "SEGFACE_CACHE": str(tmp_path / "cache"), "GRADIO_SERVER_PORT": str(port)}  # fmt: skip
    env.pop("SEGFACE_MODEL", None)
    process = subprocess.Popen([sys.executable, str(SPACE_DIR / "app.py")], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_until_served(f"http://127.0.0.1:{port}/", process=process)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        deadline = time.monotonic() + 60
        while True:
            status = client.predict(MODEL_DEFAULT_LABEL, api_name="/status")[0]
            if "loading" not in status or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status.startswith("**Model not available:**"), status
        assert "mobilenet_celeba_512" in status and "SEGFACE_MODEL=" in status and "offline" in status
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "Running on local URL:  http://127.0.0.1:" in output
    assert "Traceback" not in output, output[-3000:]


def test_default_model_is_the_converted_official_weights(hub_standin, monkeypatch, tmp_path):  # noqa: F811
    """No SEGFACE_MODEL: the official MobileNet file is fetched from kartiknarayan/SegFace (the local Hub stand-in
    here), converted once into SEGFACE_CACHE, and loaded; a restart finds it in the cache."""
    space_app()  # puts segface_demo on sys.path
    from segface_demo.models import ModelRegistry

    fixture = parity_module().load_fixture(require_shared("parity", "fixtures", "mobilenet_celeba_512"))
    torch.save(fixture.checkpoint, tmp_path / "model_299.pt")
    hub_standin.create_repo("kartiknarayan/SegFace")
    checkpoint = (tmp_path / "model_299.pt").read_bytes()
    hub_standin.add_files("kartiknarayan/SegFace", {"mobilenet_celeba_512/model_299.pt": checkpoint})
    monkeypatch.setenv("SEGFACE_CACHE", str(tmp_path / "cache"))
    registry = ModelRegistry(None)
    assert registry.default.key == "mobilenet_celeba_512" and registry.default.kind == "official"
    loaded = registry.get()
    assert loaded.labels[4] == "l_ear" and registry.status()[0] == "ready"
    assert (tmp_path / "cache" / "mobilenet_celeba_512" / "model.safetensors").is_file()
    requests = len(hub_standin.requests)
    assert ModelRegistry(None).get().labels == loaded.labels
    assert len(hub_standin.requests) == requests  # served from the cache, no Hub request
    # Offline with the original file in the huggingface_hub cache only: converted from there, no request either
    import huggingface_hub.constants

    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert ModelRegistry(None).get().labels == loaded.labels
    assert len(hub_standin.requests) == requests
    assert (tmp_path / "cache" / "mobilenet_celeba_512" / "model.safetensors").is_file()


def test_model_menu_entries(tmp_path):
    space_app()
    from segface_demo.models import ModelRegistry, ModelUnavailableError, resolve

    from segface_hf import SegFaceForSemanticSegmentation, SegFaceImageProcessor

    assert resolve("lapa").location == "swinb_lapa_448" and resolve("mobilenet").kind == "official"
    assert resolve("my-org/segface-x").kind == "hub"
    assert resolve(str(tmp_path)).kind == "folder" and resolve("./not-there").kind == "folder"
    with pytest.raises(ValueError, match="neither a folder, a Hub repo id"):
        resolve("nonsense")
    registry = ModelRegistry(f"{tmp_path / 'missing'},convnext")
    keys = [choice.key for choice in registry.choices]
    assert keys[:2] == [str(tmp_path / "missing"), "convnext_celeba_512"] and len(keys) == 15
    with pytest.raises(ModelUnavailableError, match="does not exist.*SEGFACE_MODEL="):
        registry.get()
    assert registry.status()[0] == "failed"

    # A folder whose weights cannot be read: the same kind of message, not a traceback.
    corrupt = tmp_path / "corrupt"
    SegFaceForSemanticSegmentation(tiny_config()).save_pretrained(corrupt)
    SegFaceImageProcessor(size={"height": 64, "width": 64}).save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailableError, match="could not be loaded.*SEGFACE_MODEL="):
        ModelRegistry(str(corrupt)).get()


def test_video_tab(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    photo = PIL.Image.open(EXAMPLES_DIR / "grace_hopper.jpg").convert("RGB")
    frames = []
    for index in range(6):
        canvas = PIL.Image.new("RGB", (320, 240), (90, 110, 100))
        canvas.paste(photo.resize((150, 176)), (80 + 3 * index, 30))
        frames.append(canvas)
    write_clip(tmp_path / "clip.mp4", frames)
    result, summary = client.predict(handle_file(str(tmp_path / "clip.mp4")), MODEL_LABEL, api_name="/parse_video")
    video = result["video"] if isinstance(result, dict) else result
    import av

    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 6 and container.streams.audio
        assert (container.streams.video[0].width, container.streams.video[0].height) == (320, 240)
    assert summary.startswith("6 frames (320x240") and "1 face track" in summary
    write_clip(tmp_path / "long.mp4", [PIL.Image.new("RGB", (32, 32))] * 12, fps=1, audio=False)
    with pytest.raises(AppError, match=r"12.0 s long; the demo parses clips of up to 10 s"):
        client.predict(handle_file(str(tmp_path / "long.mp4")), MODEL_LABEL, api_name="/parse_video")
