"""qpatch/effects.yaml read by qpatch/effects.py: every row parses, and the edits the
bundled patch and users ask for get the effect upstream's code gives them, on the versions
and states we know (0.14.1 on a GPU and on the CPU test bed; current upstream with Dynamic
VRAM on and off; fp8, bf16 and fp16 weights; weights not known)."""

from __future__ import annotations

import pytest

from qpatch.conditions import parse_condition
from qpatch.effects import Effect, Rule, judge, parse_rules, rules
from qpatch.errors import BadInput
from qpatch.evidence import Evidence, Fact


def evidence(version: str, device: str = "cuda", **facts: object) -> Evidence:
    found = {name: Fact(name, value, "test") for name, value in facts.items()}
    return Evidence(
        comfyui=Fact("ComfyUI", version, "/system_stats"),
        device=Fact("device", device, "/system_stats"),
        **found,
    )


OLD_GPU = evidence("0.14.1", dynamic_vram=False, allocator="cudaMallocAsync")
OLD_CPU = evidence("0.14.1", "cpu", dynamic_vram=False, allocator="none")
CURRENT_DYNAMIC = evidence("0.38.1", dynamic_vram=True, allocator="cudaMallocAsync")
CURRENT_LEGACY = evidence("0.38.1", dynamic_vram=False, allocator="cudaMallocAsync")
ALLOC = "PYTORCH_CUDA_ALLOC_CONF"


def test_every_row_parses_and_says_why() -> None:
    table = rules()
    assert len(table) >= 15
    assert all(rule.why for rule in table)


@pytest.mark.parametrize(
    ("kind", "name", "value", "ev", "flags", "effect"),
    [
        ("flag", "--lowvram", None, CURRENT_DYNAMIC, [], Effect.NO_OP),
        ("flag", "--lowvram", None, CURRENT_LEGACY, [], Effect.EFFECTIVE),
        ("flag", "--lowvram", None, OLD_GPU, [], Effect.EFFECTIVE),
        ("flag", "--lowvram", None, OLD_CPU, [], Effect.NO_OP),
        ("flag", "--highvram", None, CURRENT_DYNAMIC, [], Effect.HARMFUL),
        ("flag", "--novram", None, OLD_GPU, [], Effect.UNKNOWN),
        ("flag", "--disable-cuda-malloc", None, OLD_GPU, [], Effect.EFFECTIVE),
        ("flag", "--disable-cuda-malloc", None, OLD_CPU, [], Effect.NO_OP),
        (
            "env",
            ALLOC,
            "expandable_segments:True",
            OLD_GPU,
            ["--disable-cuda-malloc"],
            Effect.EFFECTIVE,
        ),
        ("env", ALLOC, "expandable_segments:True", OLD_GPU, [], Effect.NO_OP),
        (
            "env",
            ALLOC,
            "expandable_segments:True",
            CURRENT_DYNAMIC,
            ["--disable-cuda-malloc"],
            Effect.NO_OP,
        ),
        (
            "env",
            ALLOC,
            "max_split_size_mb:128",
            CURRENT_DYNAMIC,
            ["--disable-cuda-malloc"],
            Effect.EFFECTIVE,
        ),
        ("env", ALLOC, "expandable_segments:True", OLD_CPU, [], Effect.NO_OP),
        (
            "env",
            "PYTORCH_ALLOC_CONF",
            "expandable_segments:True",
            CURRENT_DYNAMIC,
            [],
            Effect.NO_OP,
        ),
        (
            "env",
            "PYTORCH_ALLOC_CONF",
            "backend:native, expandable_segments: True",
            CURRENT_DYNAMIC,
            ["--disable-cuda-malloc"],
            Effect.HARMFUL,
        ),
        (
            "env",
            ALLOC,
            "expandable_segments:True",
            evidence("0.33.0", dynamic_vram=True, allocator="cudaMallocAsync"),
            ["--disable-cuda-malloc"],
            Effect.HARMFUL,
        ),
        ("flag", "--cpu", None, CURRENT_DYNAMIC, [], Effect.HARMFUL),
        (
            "env",
            ALLOC,
            "max_split_size_mb:128",
            evidence("0.14.1", dynamic_vram=False, allocator="native"),
            [],
            Effect.EFFECTIVE,
        ),
        ("flag", "--lowvram", None, CURRENT_DYNAMIC, ["--disable-dynamic-vram"], Effect.EFFECTIVE),
        ("env", "TORCH_CUDA_ARCH_LIST", "8.9", OLD_GPU, [], Effect.UNKNOWN),
        ("env", "TORCH_CUDA_ARCH_LIST", "8.9", OLD_CPU, [], Effect.NO_OP),
        ("flag", "--preview-method", "auto", OLD_GPU, [], Effect.UNKNOWN),
    ],
)
def test_effects(
    kind: str, name: str, value: str | None, ev: Evidence, flags: list[str], effect: Effect
) -> None:
    assert judge(kind, name, value, ev, flags).effect is effect


@pytest.mark.parametrize(
    ("dtype", "effect"),
    [
        ("fp8_e4m3fn", Effect.HARMFUL),
        ("fp8_e5m2", Effect.HARMFUL),
        ("bf16", Effect.NO_OP),
        ("fp16", Effect.EFFECTIVE),
        ("fp32", Effect.EFFECTIVE),
        (None, Effect.UNKNOWN),
    ],
)
def test_bf16_unet_depends_on_the_weights(dtype: str | None, effect: Effect) -> None:
    ev = CURRENT_DYNAMIC.merged(
        weights_dtype=Fact("weights dtype", dtype, "header of q.safetensors")
    )
    verdict = judge("flag", "--bf16-unet", None, ev)
    assert verdict.effect is effect
    if effect is Effect.HARMFUL:
        assert "twice" in verdict.why and verdict.evidence.startswith("weights dtype fp8")
    if effect is Effect.UNKNOWN:
        assert verdict.why.startswith("harmful if weights_dtype: fp8_e4m3fn or fp8_e5m2")


def test_an_undecided_earlier_row_makes_it_unknown() -> None:
    ev = evidence("0.38.1")  # Dynamic VRAM not known
    verdict = judge("flag", "--lowvram", None, ev)
    assert verdict.effect is Effect.UNKNOWN
    assert verdict.why == "no-op if dynamic_vram: true, not (flags: --disable-dynamic-vram)"
    assert verdict.evidence == "Dynamic VRAM not known (not looked for)"


def test_a_table_row_is_data() -> None:
    table = parse_rules(
        "- flag: --new-flag\n  when: {comfyui: '>=0.40'}\n  effect: no-op\n  why: gone\n", "t.yaml"
    )
    assert table == (
        Rule(
            "flag",
            ("--new-flag",),
            None,
            parse_condition({"comfyui": ">=0.40"}, "w"),
            Effect.NO_OP,
            "gone",
            "",
        ),
    )
    assert judge("flag", "--new-flag", None, evidence("0.41"), table=table).effect is Effect.NO_OP


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {flag: --a, env: B, effect: no-op}", "t.yaml: [0]: a rule names one"),
        ("- {flag: --a, effect: maybe}", "t.yaml: [0].effect: one of"),
        ("- {flag: --a, effect: no-op, when: {x: 1}}", "t.yaml: [0].when.x: unknown condition"),
        ("{a: [", "t.yaml: not valid YAML"),
    ],
)
def test_bad_tables(text: str, message: str) -> None:
    with pytest.raises(BadInput) as raised:
        parse_rules(text, "t.yaml")
    assert str(raised.value).startswith(message)


def bundled_edits(ev: Evidence, existing: list[str]) -> list[tuple[str, Effect]]:
    """What the bundled patch writes on a server of `ev` whose launch line has `existing`:
    its edits whose `when:` holds, each judged as qpatch/plan.py judges it."""
    from qpatch.patchspec import load_patch

    step = load_patch("qwen-image-2512").startup
    assert step is not None
    kept: list[str] = []
    out: list[tuple[str, Effect]] = []
    for request in step.flags:
        if request.when is None or request.when.decide(ev, existing).value:
            verdict = judge("flag", request.flag, request.value, ev, existing + [request.flag])
            out.append((request.flag, verdict.effect))
            kept += [request.flag] if verdict.effect is not Effect.NO_OP else []
    for name, value in step.env.items():
        when = step.env_request(name).when
        if when is None or when.decide(ev, existing + kept).value:
            out.append((name, judge("env", name, value, ev, existing + kept).effect))
    return out


WEIGHTS = ("fp8_e4m3fn", "bf16", "fp16", None)


@pytest.mark.parametrize("dtype", WEIGHTS)
@pytest.mark.parametrize(
    ("server", "existing"),
    [
        (OLD_GPU, ["--listen"]),
        (CURRENT_DYNAMIC, ["--listen"]),
        (CURRENT_LEGACY, ["--disable-dynamic-vram"]),
        (OLD_CPU, ["--cpu"]),
    ],
    ids=["0.14.1-gpu", "current-dynamic-vram", "current-legacy", "0.14.1-cpu"],
)
def test_the_bundled_patch_writes_nothing_harmful_or_idle(
    server: Evidence, existing: list[str], dtype: str | None
) -> None:
    ev = server.merged(weights_dtype=Fact("weights dtype", dtype, "test"))
    written = bundled_edits(ev, existing)
    assert Effect.HARMFUL not in {e for _, e in written}
    # on the CPU the allocator edits are idle: reported and left out, as plan.py does with a
    # no-op; on a GPU of either version no edit the patch asks for is idle
    idle = [name for name, e in written if e is Effect.NO_OP]
    if server is not OLD_CPU:
        assert idle == []
    names = [name for name, _ in written]
    assert ("--bf16-unet" in names) is (dtype == "fp16")
    assert ("--lowvram" in names) is (server.dynamic_vram.value is False)
    assert ("PYTORCH_CUDA_ALLOC_CONF" in names) is (server.comfyui.value == "0.14.1")


def test_weights_of_several_dtypes_decide_nothing_they_do_not_all_share() -> None:
    mixed = Fact("weights dtype", ("bf16", "fp8_e4m3fn"), "header of a, b")
    verdict = judge("flag", "--bf16-unet", None, CURRENT_DYNAMIC.merged(weights_dtype=mixed))
    assert verdict.effect is Effect.UNKNOWN
    assert "only some of them" in verdict.evidence
