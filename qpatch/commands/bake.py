"""qpatch bake TARGET --tag IMAGE:TAG: commit a patched, healthy container as an image
whose labels name the patch, its version and every written file's sha256 (qpatch.baked),
so a container recreated from it is born patched; then say what to change in compose or
docker run to use it.

It writes nothing into the container and holds no lock while committing: a lock (or any
half-done run) caught in the image would travel into every container born from it."""

from __future__ import annotations

import re

from qpatch import __version__, baked
from qpatch.errors import BadInput, CheckFailed
from qpatch.images import same_image, split_tag
from qpatch.ledger import State
from qpatch.output import Console
from qpatch.result import Result
from qpatch.session import session
from qpatch.steps import current_sha

#: Docker's reference grammar, loosely: [registry[:port]/]path[:tag]
TAG_RE = re.compile(
    r"[a-z0-9]+(?:[._-][a-z0-9]+|[:][0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
)


def bake(
    out: Console,
    result: Result,
    *,
    target: str | None,
    tag: str,
    host: str | None,
    advise: bool = True,
) -> int:
    """`advise`: print how to use the image (a service rollout uses it itself)."""
    if not TAG_RE.fullmatch(tag):
        raise BadInput(f"--tag {tag!r} is not an image reference (e.g. comfyui-patched:qwen-v2)")
    with session(out, result, target, require_running=True, exclusive=False, host=host) as ctx:
        container = ctx.target.as_container()
        if container is None:
            raise BadInput(f"{ctx.target.description} is no container: there is nothing to commit")
        ledger = ctx.store.load()
        if ledger is None or ledger.state != State.APPLIED:
            state = str(ledger.state) if ledger else "never patched"
            raise BadInput(
                f"{ctx.target.description} is not patched ({state}): bake commits a patched one",
                hint=f"qpatch apply {ctx.target.ref} first",
            )
        if ledger.recreate is not None:
            raise BadInput(
                "this container was swapped by apply --recreate: its image is already "
                f"{ledger.recreate.image}; bake works on a patch written into files",
            )
        if ctx.target.exists(ctx.store.path("lock")):
            raise BadInput(
                f"a qpatch run holds {ctx.store.path('lock')}: bake once it has finished",
            )
        drifted = [
            r.path for r in ledger.files if current_sha(ctx.target, r.path) != r.sha256_after
        ]
        if drifted:
            raise CheckFailed(
                f"changed since qpatch wrote them: {', '.join(drifted)}; baking would ship that",
                hint=f"qpatch verify {ctx.target.ref} shows the difference",
            )
        on_mounts = container.mounted([r.path for r in ledger.files])
        if on_mounts:
            raise BadInput(
                f"{', '.join(on_mounts)}: on a volume or bind mount, which a commit does not "
                "hold: an image baked now would not carry the patch",
                hint="keep the patched files in the image (not on a mount), or recreate with "
                "the same mounts: they carry the patch already",
            )
        if ctx.api.system_stats() is None:
            raise CheckFailed(f"{ctx.target.description} does not answer /system_stats: not baked")
        source = container.image
        if same_image(tag, source):
            raise BadInput(
                f"--tag {tag} is the image {ctx.target.ref} runs: baking over it would lose "
                "the way back (the unpatched image)",
                hint=f"give a new tag, e.g. {split_tag(source)[0]}:qpatched",
            )
        labels = baked.labels_for(
            ledger, source_image=source, container=ctx.target.ref, qpatch_version=__version__
        )
        out.step(f"committing {ctx.target.description} as {tag} (paused while it is copied)")
        image_id = container.commit(tag, labels)
        out.ok(f"baked {ledger.patch} into {tag} ({image_id[7:19]})")
        result.status = "baked"
        result.patch = ledger.patch
        made = baked.read(labels)
        assert made is not None  # labels_for's own output reads back
        result.baked = {**made.to_json(), "image": tag, "image_id": image_id}
        result.files = [{"path": r.path, "sha256_after": r.sha256_after} for r in ledger.files]
        for line in how_to_use(tag, source, container.labels()) if advise else []:
            out.line(line)
        return 0


def how_to_use(tag: str, source: str, labels: dict[str, str]) -> list[str]:
    """The change the user makes so recreations start from the baked image."""
    lines = ["", "To have every recreated container born patched, start it from the baked image:"]
    service = labels.get("com.docker.compose.service")
    if service:
        files = labels.get("com.docker.compose.project.config_files", "your compose file")
        lines += [
            f"  compose ({files}), service {service}:",
            f"    image: {tag}        # was: {source}",
            "  then: docker compose up -d " + service,
        ]
    else:
        lines += [
            f"  docker run: replace the image {source} with {tag} in your docker run command",
            f"  compose: in the service's definition, image: {tag}   # was: {source}",
        ]
    lines += [
        f"  other hosts: docker push {tag} to a registry they pull from (the tag is local)",
        f"  undo: recreate from {source} again",
        f"Its labels {baked.PREFIX}* (docker image inspect {tag}) name the patch, its "
        "version and each file's sha256: qpatch verify and apply read them.",
    ]
    return lines
