"""qpatch.vram without a GPU or ComfyUI: the pure comparison and its words, the JSON the
ledger stores, and the sampler's peak logic on a real source (this process's own RSS)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from qpatch import vram
from qpatch.vram import (
    GIB,
    NO_GPU,
    Figure,
    Measurement,
    NvmlSource,
    NvmlUnavailable,
    Sample,
    Sampler,
    compare,
    node_report,
    sample_from_stats,
    vary_seed,
)

MIB = 1024**2
PAGE = os.sysconf("SC_PAGE_SIZE")

# /system_stats of the test bed on --cpu (shape from ComfyUI 0.14.1's server.py), and of a
# CUDA server; values in bytes.
CPU_STATS = {
    "system": {"comfyui_version": "0.14.1", "argv": ["main.py", "--cpu"]},
    "devices": [
        {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": 24 * GIB,
            "vram_free": 20 * GIB,
            "torch_vram_total": 24 * GIB,
            "torch_vram_free": 20 * GIB,
        }
    ],
}
CUDA_STATS = {
    "devices": [
        {
            "name": "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": 80 * GIB,
            "vram_free": 70 * GIB,
            "torch_vram_total": 9 * GIB,
            "torch_vram_free": 1 * GIB,
        }
    ]
}


def measured(
    target_gib: float | None,
    step_s: float | None = 0.160,
    *,
    source: str | None = "nvml",
    device_type: str | None = "cuda",
    not_measured: str | None = None,
    device_gib: float | None = None,
    node_gib: float | None = None,
    checksum: float | None = 1.5,
    seed: int | None = 7,
) -> Measurement:
    """A Measurement as measure_workflow builds it, from the figures a test cares about."""

    def b(g: float | None) -> Figure:
        return Figure(None if g is None else g * GIB, "bytes", source if g is not None else None)

    node = {"step_time_s": step_s, "output_checksum": checksum}
    if node_gib is not None:
        node["peak_allocated_bytes"] = node_gib * GIB
    return Measurement(
        source=source,
        device_type=device_type,
        device_name="NVIDIA H100 80GB HBM3",
        not_measured=not_measured,
        wall_s=Figure(12.0, "s", "wall"),
        target_peak=b(target_gib),
        device_peak=b(device_gib if device_gib is not None else target_gib),
        target_idle=b(0.5),
        device_idle=b(0.6),
        device_total=b(80),
        node_peak_allocated=Figure(
            None if node_gib is None else node_gib * GIB,
            "bytes",
            None if node_gib is None else "node",
        ),
        node_step_time=Figure(step_s, "s", "node" if step_s is not None else None),
        node=node,
        seed=seed,
    )


# -- verdicts -----------------------------------------------------------------------------


def test_a_real_saving_reads_as_gib_percent_and_time() -> None:
    c = compare(measured(41.71, 0.160), measured(10.65, 0.1616))
    assert c.measured and c.basis == "target_peak" and c.time_basis == "node_step_time"
    assert c.verdict == "saved 31.06 GiB (−74%) at +1% time"
    assert c.saved_bytes == pytest.approx(31.06 * GIB)
    assert c.row("target_peak").ratio == pytest.approx(10.65 / 41.71)


def test_within_tolerance_is_no_significant_change() -> None:
    c = compare(measured(10.65), measured(10.9))
    assert c.verdict == "no significant change (±5%)"
    assert compare(measured(10.0), measured(10.5)).verdict == "no significant change (±5%)"


def test_more_memory_after_is_said_so() -> None:
    c = compare(measured(10.0, 0.2), measured(12.0, 0.18))
    assert c.verdict == "used 2.00 GiB more (+20%) at −10% time"
    assert c.saving_pct == pytest.approx(-20.0)


def test_the_tolerance_is_a_parameter() -> None:
    assert compare(measured(10.0), measured(9.2), tolerance=0.10).verdict.startswith("no sig")
    assert compare(measured(10.0), measured(9.2), tolerance=0.05).verdict.startswith("saved")


def test_time_falls_back_to_wall_time_without_the_nodes_report() -> None:
    c = compare(measured(40.0, None), measured(10.0, None))
    assert c.time_basis == "wall_s"
    assert c.verdict.endswith("at +0% time")


def test_without_per_process_figures_the_device_carries_the_verdict() -> None:
    c = compare(measured(None, device_gib=42.0), measured(None, device_gib=11.0))
    assert c.basis == "device_peak"
    assert c.verdict.startswith("saved 31.00 GiB (−74%)")


def test_cpu_runs_are_not_vram_but_keep_their_numbers() -> None:
    cpu = dict(source="system_stats", device_type="cpu", not_measured=NO_GPU, node_gib=None)
    c = compare(measured(4.0, **cpu), measured(3.0, **cpu))
    assert not c.measured and c.basis is None
    assert c.verdict == "VRAM: not measured (no NVIDIA GPU visible)"
    row = c.row("target_peak")
    assert row.before.value == 4.0 * GIB and row.before.source == "system_stats"
    assert "RAM (cpu, not VRAM)" in row.label and "VRAM," not in row.label


def test_figures_from_different_sources_are_never_divided() -> None:
    c = compare(measured(40.0, source="nvml"), measured(9.0, source="system_stats"))
    assert c.row("target_peak").ratio is None
    assert c.row("target_peak").source == "nvml -> system_stats (not comparable)"
    assert not c.measured
    assert c.verdict.startswith("VRAM: not measured (before and after are not comparable")


def test_the_nodes_torch_peak_is_a_last_resort_basis() -> None:
    b = measured(None, node_gib=40.48, source="system_stats")
    a = measured(None, node_gib=9.17, source="system_stats")
    c = compare(b, a)
    assert c.basis == "node_peak_allocated"
    assert c.verdict.startswith("saved 31.31 GiB (−77%)")


# -- expectations (verify --expect-saving / --require-vram) --------------------------------


def test_expect_saving_compares_the_measured_percent() -> None:
    c = compare(measured(40.0), measured(10.0))  # 75% saved
    assert c.expect_saving(50) and c.expect_saving(75)
    assert not c.expect_saving(80)
    assert c.problems(expect_saving=50) == []
    [problem] = c.problems(expect_saving=80)
    assert "at least 80%" in problem and "75.0%" in problem


def test_no_change_fails_any_positive_expectation() -> None:
    c = compare(measured(10.0), measured(10.0))
    assert c.expect_saving(0) and not c.expect_saving(5)


def test_not_measured_passes_unless_vram_is_required() -> None:
    cpu = dict(source="system_stats", device_type="cpu", not_measured=NO_GPU)
    c = compare(measured(4.0, **cpu), measured(4.0, **cpu))
    assert c.expect_saving(50) is True
    assert c.expect_saving(50, require_vram=True) is False
    assert c.problems(expect_saving=50) == []
    [problem] = c.problems(expect_saving=50, require_vram=True)
    assert problem.startswith("VRAM: not measured (no NVIDIA GPU visible)")
    m = measured(4.0, **cpu)
    assert m.problems() == [] and len(m.problems(require_vram=True)) == 1


# -- table and JSON -------------------------------------------------------------------------


def test_table_is_aligned_plain_text_ending_in_the_verdict() -> None:
    c = compare(measured(41.71, node_gib=40.48), measured(10.65, node_gib=9.17))
    lines = c.table().splitlines()
    header, *rows = lines[: 1 + len(vram.ROWS)]
    tail = lines[1 + len(vram.ROWS) :]
    assert tail[0] == "saved 31.06 GiB (−74%) at +0% time"
    assert tail[1] == "output: same (node checksum)"
    assert tail[2].startswith("spread unknown (1 run)")  # one run a side: the ±5% of before
    assert header.split() == [
        *("before", "min", "median", "max", "after", "min", "median", "max"),
        *("ratio", "verdict", "source"),
    ]
    # figures are right-aligned: every ratio ends in the same column
    ends = {line.index("×") for line in rows if "×" in line}
    assert len(ends) == 1, c.table()
    assert rows[0].startswith("peak VRAM, target's processes (GiB)")
    assert rows[0].split()[-9:] == [
        *("41.71", "41.71", "41.71", "10.65", "10.65", "10.65"),
        *("0.26×", "saving", "nvml"),
    ]
    assert all(line.isprintable() for line in lines)


def test_missing_figures_print_as_n_a() -> None:
    c = compare(measured(None, device_gib=10.0), measured(None, device_gib=5.0))
    target = c.table().splitlines()[1]
    assert target.split()[-8:] == ["n/a"] * 8  # six figures, the ratio, the verdict


def test_different_seeds_make_no_claim_about_the_output() -> None:
    c = compare(measured(10.0, seed=1), measured(5.0, seed=2))
    assert c.same_output is None and "output:" not in c.table()
    assert compare(measured(10.0, checksum=1.0), measured(5.0, checksum=2.0)).same_output is False


def test_comparison_json_carries_every_figure_with_its_source() -> None:
    c = compare(measured(41.71, node_gib=40.48), measured(10.65, node_gib=9.17))
    d = json.loads(json.dumps(c.to_json()))
    assert d["measured"] and d["basis"] == "target_peak" and d["verdict"] == c.verdict
    assert d["saving_pct"] == pytest.approx(100 * (1 - 10.65 / 41.71))
    keys = [r["key"] for r in d["rows"]]
    assert keys == [
        *("target_peak", "device_peak", "node_peak_allocated", "node_step_time", "wall_s"),
        "host_ram_peak",
    ]
    for r in d["rows"]:
        for side in ("before", "after"):
            assert set(r[side]) == {"value", "unit", "source"}
    by = {r["key"]: r for r in d["rows"]}
    assert by["target_peak"]["before"]["source"] == "nvml"
    assert by["node_peak_allocated"]["after"]["source"] == "node"
    assert by["wall_s"]["after"] == {"value": 12.0, "unit": "s", "source": "wall"}


def test_measurement_json_round_trips_and_compares_as_a_dict() -> None:
    m = measured(41.71, node_gib=40.48)
    d = json.loads(json.dumps(m.to_json()))
    assert d["vram_measured"] is True and d["summary"].startswith("VRAM peak 41.71 GiB (nvml)")
    assert Measurement.from_json(d) == m
    assert compare(d, measured(10.65).to_json()).verdict.startswith("saved 31.06 GiB")


def test_a_measurement_without_any_source_prints_not_measured() -> None:
    m = Measurement.from_json({"wall_s": {"value": 3.0, "unit": "s", "source": "wall"}})
    assert str(m) == "VRAM: not measured (no NVIDIA GPU visible)"
    assert m.table().splitlines()[-1] == "VRAM: not measured (no NVIDIA GPU visible)"
    assert "3.000 s" in m.table()


# -- pieces of measure_workflow ----------------------------------------------------------


def test_system_stats_on_cpu_is_ram_of_the_cpu_device() -> None:
    s = sample_from_stats(CPU_STATS)
    assert dict(s.devices) == {"cpu": 4 * GIB}
    assert s.target == 4 * GIB


def test_system_stats_on_cuda_separates_torch_from_the_device() -> None:
    s = sample_from_stats(CUDA_STATS)
    assert dict(s.devices) == {"cuda:0": 10 * GIB}
    assert dict(s.target_on) == {"cuda:0": 8 * GIB} and s.target == 8 * GIB


def test_vary_seed_sets_literal_seed_inputs_only() -> None:
    prompt = {
        "1": {"class_type": "QwenImageLoader", "inputs": {"seed": 0, "steps": 5}},
        "2": {"class_type": "KSampler", "inputs": {"noise_seed": 3, "seed": ["5", 0]}},
        "3": {"class_type": "X", "inputs": {"seed": True}},
    }
    out, changed = vary_seed(prompt, 1234)
    assert changed == ["1.seed", "2.noise_seed"]
    assert out["1"]["inputs"] == {"seed": 1234, "steps": 5}
    assert out["2"]["inputs"]["seed"] == ["5", 0]  # a link, not a value
    assert out["3"]["inputs"]["seed"] is True
    assert prompt["1"]["inputs"]["seed"] == 0  # the caller's prompt is untouched


def test_node_report_is_the_first_json_object_with_the_nodes_keys() -> None:
    report = {"peak_allocated_bytes": None, "step_time_s": 0.1, "output_checksum": 2.0}
    texts = ["plain words", "[1, 2]", json.dumps({"other": 1}), json.dumps(report)]
    assert node_report(texts) == report
    assert node_report(["nothing here"]) is None


# -- the sampler, on a real source ---------------------------------------------------------


def rss_sample() -> Sample:
    """This process's resident memory, from /proc: a real reading that a test can move."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    return Sample(target=rss, devices={"ram": rss}, target_on={"ram": rss})


def rss() -> int:
    target = rss_sample().target
    assert target is not None
    return target


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_sampler_keeps_the_peak_of_an_allocation_that_came_and_went() -> None:
    size = 96 * MIB
    with Sampler(rss_sample, interval=0.005) as sampler:
        time.sleep(0.05)
        start = rss()
        block = b"\x01" * size  # written, so every page is resident
        time.sleep(0.1)
        del block  # a large block is unmapped on free: the RSS really drops
        time.sleep(0.1)
        after = rss()
    peaks = sampler.peaks()
    assert after < start + size // 2, "the block did not leave RSS; the test proves nothing"
    assert peaks.target is not None and peaks.target >= start + size * 0.9
    assert peaks.device_key == "ram" and peaks.devices["ram"] == peaks.target
    assert peaks.first is not None and peaks.first.target is not None
    assert peaks.first.target < peaks.target
    assert peaks.samples >= 10 and peaks.errors == 0


def test_sampler_takes_a_reading_at_start_and_stop_even_for_a_short_run() -> None:
    sampler = Sampler(rss_sample, interval=60)
    sampler.start()
    peaks = sampler.stop()
    assert peaks.samples == 2 and peaks.target is not None


def test_failing_and_empty_readings_are_counted_not_fatal() -> None:
    readings: list[Any] = [
        Sample(1, {"a": 1}),
        OSError("exec failed"),
        None,
        Sample(5, {"a": 9}),
        Sample(3, {"a": 2}),
    ]

    def source() -> Sample | None:
        r = readings.pop(0) if readings else None
        if isinstance(r, Exception):
            raise r
        return r

    sampler = Sampler(source, interval=60)
    for _ in range(6):
        sampler.read_once()
    peaks = sampler.peaks()
    assert (peaks.target, peaks.device, peaks.samples, peaks.errors) == (5, 9, 3, 1)
    assert peaks.last_error == "OSError: exec failed"


def test_the_device_is_the_one_the_target_used_most() -> None:
    sampler = Sampler(lambda: None)
    sampler._add(Sample(2, {"gpu0": 70, "gpu1": 20}, {"gpu0": 0, "gpu1": 2}))
    sampler._add(Sample(8, {"gpu0": 60, "gpu1": 30}, {"gpu0": 0, "gpu1": 8}))
    peaks = sampler.peaks()
    assert (peaks.device_key, peaks.device, peaks.target) == ("gpu1", 30, 8)
    alone = Sampler(lambda: None)
    alone._add(Sample(None, {"gpu0": 5, "gpu1": 7}))
    assert alone.peaks().device_key == "gpu1"  # nothing attributed: the busiest


# -- NVML, for real: this machine has no driver ----------------------------------------------


def nvml_works() -> bool:
    try:
        NvmlSource(lambda: []).close()
    except NvmlUnavailable:
        return False
    return True


@pytest.mark.skipif(nvml_works(), reason="NVML works on this host")
def test_without_a_driver_nvml_is_unavailable_with_a_reason() -> None:
    with pytest.raises(NvmlUnavailable, match="NVML"):
        NvmlSource(lambda: [os.getpid()])


def test_pid_cache_refreshes_at_most_every_interval() -> None:
    calls: list[float] = []

    def pids() -> list[int]:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("container gone")
        return [len(calls)]

    cache = vram.PidCache(pids, every=0.05)
    assert cache() == {1} and cache() == {1} and len(calls) == 1
    time.sleep(0.06)
    assert cache() == {1}, "a failed refresh keeps the last known set"
    time.sleep(0.06)
    assert cache() == {3}


# -- host RAM of the target's processes, read from this host's real /proc ------------------


def own_argv() -> tuple[str, ...]:
    with open("/proc/self/cmdline", "rb") as f:
        return tuple(a.decode() for a in f.read().split(b"\0") if a)


def unused_pid() -> int:
    """A PID no process has now (the highest PIDs are free on any machine)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_host_rss_sums_the_resident_memory_of_the_pids_it_can_read() -> None:
    mine = vram.HostRss(lambda: [os.getpid()])()
    assert mine is not None and abs(mine - rss()) < 64 * MIB
    both = vram.HostRss(lambda: [os.getpid(), os.getppid(), unused_pid()])()
    assert both is not None and both > mine  # the parent counted, the missing PID skipped
    assert vram.HostRss(lambda: [unused_pid()])() is None  # nothing read: no figure, not 0


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="needs Linux /proc")
def test_host_ram_is_measured_only_where_this_host_sees_the_servers_processes(
    tmp_path: Any,
) -> None:
    me = os.getpid()
    assert vram.host_ram_unseen([me], [own_argv()]) is None
    assert vram.host_ram_unseen([me], []) is None  # no server listed: nothing to check against
    gone = unused_pid()
    unseen = vram.host_ram_unseen([gone], [own_argv()])
    assert unseen == (
        f"the target's processes (PIDs {gone}) are not visible from this host: "
        "a remote engine or another PID namespace"
    )
    # PIDs that exist here but run something else: another host's numbers (a remote engine)
    elsewhere = vram.host_ram_unseen([me], [("python", "main.py", "--listen")])
    assert elsewhere is not None and "live elsewhere (a remote engine)" in elsewhere
    assert vram.host_ram_unseen([], []) == "the target names no processes on this host"
    no_proc = tmp_path / "no-proc"
    assert vram.host_ram_unseen([me], [], proc=no_proc) == f"this host has no {no_proc}"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_the_sampler_keeps_the_host_ram_peak_beside_the_other_readings() -> None:
    size = 96 * MIB
    host = vram.HostRss(lambda: [os.getpid()])
    with Sampler(lambda: Sample(1, {"gpu0": 1}), interval=0.005, host_rss=host) as sampler:
        time.sleep(0.05)
        start = rss()
        block = b"\x01" * size
        time.sleep(0.1)
        del block
        time.sleep(0.1)
    peaks = sampler.peaks()
    assert peaks.host_rss is not None and peaks.host_rss >= start + size * 0.9
    assert (peaks.target, peaks.device) == (1, 1)
    alone = Sampler(None, interval=60, host_rss=host)  # host RAM with no VRAM source at all
    alone.start()
    only = alone.stop()
    assert only.host_rss is not None and only.target is None and only.samples == 0


def test_a_measurement_without_host_ram_says_why_and_older_json_reads_as_unmeasured() -> None:
    from dataclasses import replace

    m = replace(measured(10.0), host_ram_not_measured="the target names no processes")
    assert "host RAM: not measured (the target names no processes)" in m.table()
    stored = measured(10.0).to_json()
    del stored["host_ram_peak"], stored["host_ram_not_measured"]
    again = Measurement.from_json(stored)
    assert again.host_ram_peak == Figure.none() and again.host_ram_not_measured is None
    c = compare(stored, measured(5.0).to_json())
    assert c.row("host_ram_peak").ratio is None and c.row("host_ram_peak").verdict == "n/a"
