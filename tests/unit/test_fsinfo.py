"""Parsing a target's mount table and free space, and path containment, on real shapes of
/proc/self/mountinfo (a container with a single-file bind mount, a tmpfs, an escaped space)
and `df -P -k` output."""

from __future__ import annotations

from qpatch.targets.fsinfo import (
    inside,
    is_mount_point,
    mount_of,
    parse_df,
    parse_mountinfo,
    split_probe,
)

MOUNTINFO = """\
612 530 0:52 / / rw,relatime master:229 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
613 612 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
622 612 8:1 /srv/start.sh /root/1键启动.sh rw,relatime - ext4 /dev/sda1 rw
623 612 0:60 / /var/lib/qpatch rw,relatime - tmpfs tmpfs rw,size=64k
624 612 8:1 /srv/models /root/ComfyUI/my\\040models ro,relatime - ext4 /dev/sda1 rw
"""


def test_mountinfo_points_options_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.point for m in mounts] == [
        "/",
        "/proc",
        "/root/1键启动.sh",  # the kernel escapes only space, tab, newline and backslash
        "/var/lib/qpatch",
        "/root/ComfyUI/my models",
    ]
    assert mounts[4].read_only and not mounts[0].read_only
    assert mounts[3].fstype == "tmpfs"


def test_a_single_file_bind_mount_is_a_mount_point() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert is_mount_point("/root/1键启动.sh", mounts)
    assert not is_mount_point("/root/ComfyUI/main.py", mounts)
    assert mount_of("/var/lib/qpatch/docker-x/files", mounts).point == "/var/lib/qpatch"
    assert mount_of("/root/ComfyUI/my models/a.safetensors", mounts).read_only
    assert mount_of("/root/ComfyUI/main.py", mounts).point == "/"


def test_df_lines_map_to_folders() -> None:
    text = (
        "overlay          61255492  40220400  17893032  70% /\n"
        "tmpfs                  64        60         4  94% /var/lib/qpatch\n"
    )
    spaces = parse_df(["/root/ComfyUI", "/var/lib/qpatch"], text)
    assert spaces["/root/ComfyUI"].available == 17893032 * 1024
    assert spaces["/var/lib/qpatch"].available == 4 * 1024
    assert spaces["/var/lib/qpatch"].mount == "/var/lib/qpatch"
    assert parse_df(["/a", "/b"], "garbage\n") == {}


def test_probe_output_splits() -> None:
    mountinfo, df = split_probe("== mountinfo\nA\nB\n== df\nC\n")
    assert (mountinfo, df) == ("A\nB\n", "C\n")


def test_inside_is_by_components() -> None:
    assert inside("/root/ComfyUI/custom_nodes/x.py", "/root/ComfyUI")
    assert inside("/root/ComfyUI", "/root/ComfyUI/")
    assert not inside("/root/ComfyUI-old/x.py", "/root/ComfyUI")
    assert not inside("/etc/hostname", "/root/ComfyUI")
    assert inside("/anything", "/")
    assert not inside("/root/ComfyUI/../x", "/root/ComfyUI")
