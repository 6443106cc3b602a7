"""qpatch.images: image references as Docker writes them."""

from __future__ import annotations

import pytest

from qpatch.images import same_image, split_tag, without_digest


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("repo", ("repo", None)),
        ("repo:1", ("repo", "1")),
        ("reg:5000/repo", ("reg:5000/repo", None)),  # a port, not a tag
        ("reg:5000/team/repo:2", ("reg:5000/team/repo", "2")),
        ("a/b:c@sha256:abc", ("a/b", "c")),
        ("a@sha256:abc", ("a", None)),
    ],
)
def test_split_tag(ref: str, want: tuple[str, str | None]) -> None:
    assert split_tag(ref) == want


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("x", "x:latest", True),
        ("reg:5000/x", "reg:5000/x:latest", True),
        ("x:1@sha256:abc", "x:1", True),
        ("x:1", "x:2", False),
        ("x", "y", False),
        (None, "x", False),
        ("", "", False),
    ],
)
def test_same_image(a: str | None, b: str | None, same: bool) -> None:
    assert same_image(a, b) is same


def test_without_digest() -> None:
    assert without_digest("qpatch-baked/s:p-v1@sha256:abc") == "qpatch-baked/s:p-v1"
