"""Stand-in for transformers' utils/fetch_hub_objects_for_ci.py (not in the 5.24.0 source distribution).

Upstream maps an image URL to a copy cached for CI. The tests run offline, so every URL maps to a public-domain test
photo of the project's shared material (../shared/images/astronaut.png), or fails clearly when that is absent.
"""

from pathlib import Path

_PHOTO = Path(__file__).resolve().parents[4] / "shared" / "images" / "astronaut.png"


def url_to_local_path(url, return_url_if_not_found=True):
    if not _PHOTO.exists():
        raise FileNotFoundError(f"{_PHOTO} (the shared test photo standing in for {url}) is missing.")
    return str(_PHOTO)
