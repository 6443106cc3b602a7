"""`when:` conditions: parsing (errors in the patch author's terms) and three-valued
deciding on evidence."""

from __future__ import annotations

import pytest

from qpatch.conditions import VersionRange, parse_condition
from qpatch.errors import BadInput
from qpatch.evidence import Evidence, Fact, version_tuple

CURRENT = Evidence(
    comfyui=Fact("ComfyUI", "0.38.1", "/system_stats"),
    torch=Fact("torch", "2.13.0+cu128", "/system_stats"),
    device=Fact("device", "cuda", "/system_stats"),
    dynamic_vram=Fact("Dynamic VRAM", True, "start-up log"),
    weights_dtype=Fact("weights dtype", "fp8_e4m3fn", "safetensors header of q.safetensors"),
)
OLD = Evidence(comfyui=Fact("ComfyUI", "0.14.1", "/system_stats"))


@pytest.mark.parametrize(
    ("text", "version"),
    [("0.38.1", (0, 38, 1)), ("v0.3.54", (0, 3, 54)), ("2.13.0+cu128", (2, 13, 0)), ("x", None)],
)
def test_version_tuple(text: str, version: tuple[int, ...] | None) -> None:
    assert version_tuple(text) == version


@pytest.mark.parametrize(
    ("spec", "version", "inside"),
    [
        (">=0.15", (0, 38, 1), True),
        (">=0.15", (0, 14, 1), False),
        ("<0.15", (0, 14, 1), True),
        (">=0.15,<0.18", (0, 16), True),
        (">=0.15,<0.18", (0, 18, 0), False),
        ("==0.14", (0, 14, 0), True),
        ("!=0.14.1", (0, 14, 1), False),
        ("> 2.8", (2, 13), True),
    ],
)
def test_version_ranges(spec: str, version: tuple[int, ...], inside: bool) -> None:
    assert VersionRange.parse(spec).contains(version) is inside


@pytest.mark.parametrize(
    ("when", "value"),
    [
        ({"comfyui": ">=0.15", "dynamic_vram": True}, True),
        ({"comfyui": "<0.15"}, False),
        ({"weights_dtype": ["fp8_e4m3fn", "fp8_e5m2"]}, True),
        ({"weights_dtype": "bf16"}, False),
        ({"not": {"weights_dtype": ["fp8_e4m3fn"]}}, False),
        ({"device": "cuda", "torch": ">=2.8"}, True),
        ({"allocator": "cudaMallocAsync"}, None),  # not known
        ({"dynamic_vram": True, "allocator": "native"}, None),
        ({"dynamic_vram": False, "allocator": "native"}, False),  # false beats unknown
        ({"not": {"allocator": "native"}}, None),
    ],
)
def test_deciding(when: dict, value: bool | None) -> None:
    assert parse_condition(when, "p.yaml: when").decide(CURRENT).value is value


def test_flags_are_the_servers_flags_after_the_edit() -> None:
    when = parse_condition({"flags": "--disable-cuda-malloc"}, "w")
    assert when.decide(OLD, ["--cpu", "--disable-cuda-malloc"]).value is True
    assert when.decide(OLD, ["--cpu"]).value is False


def test_the_reason_names_the_evidence_and_its_source() -> None:
    outcome = parse_condition({"comfyui": "<0.15"}, "w").decide(CURRENT)
    assert outcome.why == "ComfyUI 0.38.1 (/system_stats), wanted <0.15"
    unknown = parse_condition({"allocator": "native"}, "w").decide(CURRENT)
    assert unknown.why == "allocator not known (not looked for)"


def test_a_version_that_is_no_version_cannot_be_decided() -> None:
    odd = Evidence(comfyui=Fact("ComfyUI", "master", "/system_stats"))
    assert parse_condition({"comfyui": ">=0.15"}, "w").decide(odd).value is None


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({}, "p.yaml: steps[1].when: expected a mapping of conditions"),
        ({"comfy": ">=1"}, "p.yaml: steps[1].when.comfy: unknown condition"),
        ({"comfyui": "0.15+"}, "p.yaml: steps[1].when.comfyui: '0.15+' is not like '>=0.15'"),
        ({"dynamic_vram": "yes"}, "p.yaml: steps[1].when.dynamic_vram: expected true or false"),
        ({"weights_dtype": [1]}, "p.yaml: steps[1].when.weights_dtype: expected a string or"),
        ({"not": {"x": 1}}, "p.yaml: steps[1].when.not.x: unknown condition"),
    ],
)
def test_bad_conditions_name_where_they_are(when: dict, message: str) -> None:
    with pytest.raises(BadInput) as raised:
        parse_condition(when, "p.yaml: steps[1].when")
    assert str(raised.value).startswith(message)
