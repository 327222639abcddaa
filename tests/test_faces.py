"""Face detection, the training-data framings, parsing face by face and pasting back."""

from __future__ import annotations

import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_DECODER, require_shared, tiny_backbone_config, tiny_config

from segface_hf import LAPA_LABELS, SegFaceConfig, SegFaceForSemanticSegmentation, SegFaceImageProcessor
from segface_hf.inference.faces import (
    SegFaceFaceCrop,
    SegFaceFaceDetection,
    SegFaceFaceDetector,
    SegFaceMissingDependencyError,
    SegFaceNoFaceError,
    celebamask_hq_quad,
    extract_quad,
    face_crops,
    framing_for,
    helen_quad,
    parse_faces,
    paste_faces,
)
from segface_hf.face_warp import FACE_TEMPLATE_512


@pytest.fixture(scope="module")
def detector():
    return SegFaceFaceDetector()


def _photo(name: str) -> PIL.Image.Image:
    return PIL.Image.open(require_shared("images", name)).convert("RGB")


def _tiny(num_labels=19, **overrides):
    torch.manual_seed(0)
    labels = dict(enumerate(LAPA_LABELS)) if num_labels == 11 else {i: f"class_{i}" for i in range(num_labels)}
    config = SegFaceConfig(backbone_config=tiny_backbone_config("timm-mobilenet"), id2label=labels,
                           **{**TINY_DECODER, **overrides})  # fmt: skip
    model = SegFaceForSemanticSegmentation(config).eval()
    return model, SegFaceImageProcessor(size={"height": 64, "width": 64})


@pytest.fixture(scope="module")
def tiny_celeb():
    return _tiny(19)


def _check_face_geometry(face: SegFaceFaceDetection, image: PIL.Image.Image):
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
    assert 40 < x1 - x0 < 0.8 * image.width
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    for x, y in face.landmarks:  # every landmark inside the box
        assert x0 < x < x1 and y0 < y < y1
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # image-left first
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])  # eyes, nose, mouth downwards
    assert left_eye[0] < nose[0] < right_eye[0]
    eye_distance = np.hypot(*(right_eye - left_eye))
    assert 0.25 * (x1 - x0) < eye_distance < 0.7 * (x1 - x0)
    assert face.score > 0.95


def test_detects_grace_hopper(detector):
    image = _photo("grace_hopper.jpg")
    faces = detector(image)
    assert len(faces) == 1
    _check_face_geometry(faces[0], image)
    x0, y0, x1, y1 = faces[0].box  # her face is in the upper middle of the portrait
    assert 100 < (x0 + x1) / 2 < 400 and 100 < (y0 + y1) / 2 < 350


def test_detects_the_astronaut(detector):
    image = _photo("astronaut.png")
    faces = detector(image)
    assert len(faces) == 1
    _check_face_geometry(faces[0], image)
    x0, y0, x1, y1 = faces[0].box  # the face is in the top half, left of centre
    assert 150 < (x0 + x1) / 2 < 300 and 50 < (y0 + y1) / 2 < 200


@pytest.fixture(scope="module")
def two_faces():
    canvas = PIL.Image.new("RGB", (1024, 600), (128, 128, 128))
    canvas.paste(_photo("grace_hopper.jpg"), (0, 0))
    canvas.paste(_photo("astronaut.png"), (512, 44))
    return canvas


def test_two_faces_are_found_and_both_pasted_back(detector, two_faces, tiny_celeb):
    faces = detector(two_faces)
    assert len(faces) == 2
    for face in faces:
        _check_face_geometry(face, two_faces)
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in faces)
    assert centres[0] < 512 < centres[1]
    model, processor = tiny_celeb
    result = parse_faces(two_faces, model, processor, detector=detector)
    assert result.mode == "faces" and len(result.faces) == 2
    assert result.label_map.shape == (600, 1024) and result.label_map.max() < 19
    owners, counts = np.unique(result.face_index, return_counts=True)
    assert set(owners.tolist()) == {-1, 0, 1} and (counts > 1000).all()
    for index, face in enumerate(result.faces):
        assert face.label_map.shape == (600, 1024)
        left_half = (face.detection.box[0] + face.detection.box[2]) / 2 < 512
        owned = np.nonzero(result.face_index == index)[1]
        assert (owned < 600).all() if left_half else (owned >= 512 - 50).all()
        # where a face owns a pixel, the combined map shows that face's own label
        mine = result.face_index == index
        assert np.array_equal(result.label_map[mine], face.label_map[mine])
    assert (result.label_map[result.face_index == -1] == 0).all()


def test_celebamask_hq_quad_by_hand():
    landmarks = [[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]]
    # eye_to_eye (40, 0); eye_to_mouth (0, 40); x = (40, 0) - rot90((0, 40)) = (80, 0), scaled to max(80, 72) = 80;
    # y = (0, 80); centre = eye midpoint (120.5, 100.5) + 0.1 * (0, 40); corners c -/+ x -/+ y, + 0.5.
    expected = [[41, 25], [41, 185], [201, 185], [201, 25]]
    assert np.allclose(celebamask_hq_quad(landmarks), expected)


def test_celebamask_hq_quad_turns_with_the_face():
    landmarks = np.array([[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]], dtype=float)
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pivot = np.array([200.0, 150.0])
    turned = (landmarks + 0.5 - pivot) @ rotation.T + pivot - 0.5
    # The construction works on pixel-centre coordinates (index + 0.5) and shifts the result by another half pixel.
    expected = (celebamask_hq_quad(landmarks) - 0.5 - pivot) @ rotation.T + pivot + 0.5
    assert np.allclose(celebamask_hq_quad(turned), expected, atol=1e-9)


def test_helen_crop_matches_68_point_annotations():
    """The Helen crop (1.2x square of the 68-point box) estimated from 5 points, on real 68-point annotations."""
    folder = require_shared("data", "facesynthetics")
    ious = []
    for path in sorted(folder.glob("*_ldmks.txt")):
        points = np.loadtxt(path)[:68]
        five = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
        low, high = points.min(0), points.max(0)
        size = high - low + 1
        side, centre = int(1.2 * size.max()), (low + size / 2).astype(int)  # the original Helen dataset code
        truth = np.array([centre[0] - side // 2, centre[1] - side // 2, centre[0] - side // 2 + side,
                          centre[1] - side // 2 + side], dtype=float)  # fmt: skip
        quad = helen_quad(five)
        estimate = np.array([quad[:, 0].min(), quad[:, 1].min(), quad[:, 0].max(), quad[:, 1].max()])
        overlap = np.clip(np.minimum(truth[2:], estimate[2:]) - np.maximum(truth[:2], estimate[:2]), 0, None).prod()
        union = np.prod(truth[2:] - truth[:2]) + np.prod(estimate[2:] - estimate[:2]) - overlap
        ious.append(overlap / union)
    assert len(ious) == 50
    assert np.mean(ious) > 0.75 and np.min(ious) > 0.5


def test_lapa_crop_puts_the_template_face_at_the_frame_centre():
    size = 64
    template = np.asarray(FACE_TEMPLATE_512).reshape(5, 2) * (size - 1) / 512
    landmarks = template * 1.7 + [300.0, 200.0]
    detection = SegFaceFaceDetection(box=np.array([0, 0, 1, 1.0]), landmarks=landmarks, score=1.0)
    crop = face_crops(PIL.Image.new("RGB", (700, 500)), [detection], "lapa", (size, size))[0]
    assert crop.image.size == (2 * size, 2 * size)
    # the aligned R x R frame sits in the middle of the 2R x 2R crop
    assert np.allclose(crop.landmarks, template + size / 2, atol=1e-6)


def test_framing_follows_the_label_set():
    assert framing_for(SegFaceConfig.from_variant("swinb_celeba_512")) == "celebamask-hq"
    assert framing_for(SegFaceConfig.from_variant("swinb_lapa_448")) == "lapa"
    assert framing_for(SegFaceConfig.from_variant("swinb_helen_512")) == "helen"
    assert framing_for(tiny_config(num_labels=7)) == "celebamask-hq"


def _checkerboard(width, height, cell=8):
    ys, xs = np.mgrid[:height, :width]
    pattern = (((xs // cell) + (ys // cell)) % 2 * 200 + 30).astype(np.uint8)
    return np.stack([pattern, np.roll(pattern, 3, axis=1), 255 - pattern], axis=-1)


def test_crops_at_the_border_are_padded_not_clipped():
    inner = _checkerboard(120, 100)
    canvas = np.zeros((300, 320, 3), dtype=np.uint8)
    canvas[100:200, 100:220] = inner
    quad = np.array([[60.0, 110], [60, 190], [140, 190], [140, 110]])  # crosses the left border of `inner` (x = 100)
    near_border = np.asarray(extract_quad(PIL.Image.fromarray(inner), quad - [100, 100], (64, 64))).astype(int)
    with_room = np.asarray(extract_quad(PIL.Image.fromarray(canvas), quad, (64, 64))).astype(int)
    assert near_border.shape == (64, 64, 3)
    # The framing is the same: the part inside the image agrees (away from the resampling support at the border).
    assert np.abs(near_border[:, 36:] - with_room[:, 36:]).mean() < 2
    # Beyond the border the crop is filled from the image (reflected, blurred, faded), not black and not clipped.
    outside = near_border[:, :28]
    assert outside.mean() > 60 and outside.std() > 1
    assert not np.array_equal(outside, with_room[:, :28])


def test_face_cut_by_the_border(detector, tiny_celeb):
    image = _photo("grace_hopper.jpg").crop((200, 60, 512, 600))  # the left part of her face is cut off
    faces = detector(image)
    assert len(faces) == 1 and faces[0].box[0] < 0 < faces[0].landmarks[1, 0]
    model, processor = tiny_celeb
    result = parse_faces(image, model, processor, detector=detector)
    quad = result.faces[0].quad
    assert quad[:, 0].min() < 0  # the framing extends beyond the photo ...
    assert result.faces[0].region[0] == 0 and result.label_map.shape == (540, 312)  # ... the paste stays inside
    assert result.faces[0].covered[:, 0].any()


def test_no_face(detector, tiny_celeb):
    model, processor = tiny_celeb
    blank = PIL.Image.new("RGB", (200, 150), (90, 120, 200))
    with pytest.raises(SegFaceNoFaceError, match="no face found"):
        parse_faces(blank, model, processor, detector=detector)
    result = parse_faces(blank, model, processor, detector=detector, if_no_face="whole-image")
    assert result.mode == "whole-image" and result.label_map.shape == (150, 200)


def test_skipping_detection_parses_the_whole_image(tiny_celeb):
    model, processor = tiny_celeb
    image = _photo("astronaut.png").resize((90, 70))
    result = parse_faces(image, model, processor, detect=False)
    assert result.mode == "whole-image" and result.label_map.shape == (70, 90)
    expected = processor.post_process_semantic_segmentation(model(**processor(image)), target_sizes=[(70, 90)])[0]
    assert np.array_equal(result.label_map, expected.numpy())


def test_lapa_models_get_landmarks(detector):
    model, processor = _tiny(11, use_face_warp=True)
    image = _photo("grace_hopper.jpg")
    result = parse_faces(image, model, processor, detector=detector)
    assert result.mode == "faces" and result.label_map.shape == (600, 512) and result.label_map.max() < 11
    assert result.faces[0].covered.sum() > 100 * 100  # the 2x-context LaPa crop around her face
    aligned = parse_faces(image.resize((64, 64)), model, processor, detect=False)  # template landmarks
    assert aligned.label_map.shape == (64, 64)


def test_overlapping_faces_take_the_most_confident_face():
    # Two crops over a 4x8 image, overlapping in columns 2..5; 3 classes, class 0 background.
    def crop(x0, x1):
        return SegFaceFaceCrop(
            image=PIL.Image.new("RGB", (4, 4)), quad=np.array([[x0, 0.0], [x0, 4], [x1, 4], [x1, 0]])
        )

    first = torch.zeros(3, 4, 4)
    first[0] = 4.0  # confident background everywhere
    second = torch.zeros(3, 4, 4)
    second[2] = 4.0  # confident class 2 everywhere
    result = paste_faces((4, 8), [crop(0, 6), crop(2, 8)], [first, second])
    assert (result.label_map[:, :2] == 0).all() and (result.face_index[:, :2] == 0).all()
    assert (result.label_map[:, 2:] == 2).all() and (result.face_index[:, 2:] == 1).all()
    # equal confidence: the earlier face keeps the pixel
    tie = paste_faces((4, 8), [crop(0, 6), crop(2, 8)], [second, second.clone()])
    assert (tie.face_index[:, :6] == 0).all() and (tie.face_index[:, 6:] == 1).all()
    assert (tie.faces[1].label_map[:, :2] == 0).all() and not tie.faces[1].covered[:, :0].any()


def test_missing_detector_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(SegFaceMissingDependencyError, match=r"segface-hf\[faces\]"):
        SegFaceFaceDetector()


def test_crops_go_through_the_model_one_at_a_time_on_the_cpu_unless_a_batch_size_is_given(tiny_celeb):
    from segface_hf.inference.faces import segment_crops

    model, processor = tiny_celeb
    crops = [SegFaceFaceCrop(image=PIL.Image.new("RGB", (64, 64), (40 * i, 90, 120)), quad=None, resize=True)
             for i in range(3)]  # fmt: skip
    batches = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: batches.append(len(kwargs["pixel_values"])),
                                           with_kwargs=True)  # fmt: skip
    try:
        by_default = segment_crops(model, processor, crops)
        assert batches == [1, 1, 1]
        batches.clear()
        in_pairs = segment_crops(model, processor, crops, batch_size=2)
        assert batches == [2, 1]
    finally:
        hook.remove()
    for one, other in zip(by_default, in_pairs):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-4)
