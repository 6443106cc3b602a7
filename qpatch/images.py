"""Image references as Docker writes them, `[registry[:port]/]path[:tag][@digest]`, in one
place: bake, the Swarm rollout and the commit all ask the same questions of them."""

from __future__ import annotations


def without_digest(ref: str) -> str:
    """`repo:tag@sha256:…` → `repo:tag`: Swarm pins a digest onto the image it was given."""
    return ref.split("@", 1)[0]


def split_tag(ref: str) -> tuple[str, str | None]:
    """(repository, tag or None). `registry:5000/repo` has a port, not a tag: a tag is
    after the last slash."""
    name = without_digest(ref)
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return name, None
    return repository, tag


def same_image(a: str | None, b: str | None) -> bool:
    """One image name: `repo` and `repo:latest` are, a digest pin is not part of it."""
    if not a or not b:
        return False
    (repo_a, tag_a), (repo_b, tag_b) = split_tag(a), split_tag(b)
    return repo_a == repo_b and (tag_a or "latest") == (tag_b or "latest")
