"""qpatch.vram.series and the comparison of two series: the statistics over warm runs, the
rule that calls a difference a saving or a cost only above the noise, the words and JSON
it gives, one run (spread unknown), and the JSON an older qpatch stored."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qpatch import baselines, cli
from qpatch.errors import BadInput
from qpatch.vram import (
    COMPLETED,
    COST,
    DEFAULT_RUNS,
    GIB,
    SAVING,
    WITHIN_NOISE,
    Figure,
    Measurement,
    Series,
    Stats,
    as_series,
    compare,
    judge,
    run_labels,
)
from tests.unit.test_vram import measured


def run(
    target_gib: float | None,
    *,
    wall: float = 12.0,
    step: float | None = 0.160,
    host_gib: float | None = None,
    source: str | None = "nvml",
    note: str | None = None,
) -> Measurement:
    """One run as measure_workflow makes it, from the figures a test moves."""
    m = measured(target_gib, step, source=source)
    host = Figure(None if host_gib is None else host_gib * GIB, "bytes", host_gib and "proc")
    return replace(
        m,
        wall_s=Figure(wall, "s", "wall"),
        host_ram_peak=host,
        notes=[note] if note else [],
    )


def series(cold: float | None, *warm: float | None, **kw: object) -> Series:
    """A cold run, then warm runs with these target peaks (GiB)."""
    return Series.of([run(g, **kw) for g in (cold, *warm)])  # type: ignore[arg-type]


# -- statistics ---------------------------------------------------------------------------


def test_stats_are_min_median_max_and_the_spread_between_them() -> None:
    s = Stats((3.0, 1.0, 2.0), "bytes", "nvml")
    assert (s.n, s.min, s.median, s.max, s.spread) == (3, 1.0, 2.0, 3.0, 2.0)
    assert Stats((1.0, 4.0), "s", "wall").median == 2.5
    one = Stats((7.0,), "bytes", "nvml")
    assert one.spread is None, "one value: no spread is known, which is not a spread of 0"
    assert s.figure() == Figure(2.0, "bytes", "nvml")
    assert s.to_json() == {
        "min": 1.0,
        "median": 2.0,
        "max": 3.0,
        "spread": 2.0,
        "n": 3,
        "unit": "bytes",
        "source": "nvml",
        "values": [3.0, 1.0, 2.0],
    }


def test_the_cold_run_is_reported_apart_and_never_counted() -> None:
    s = series(60.0, 41.6, 41.9, 41.7)  # the cold run paid once-only costs
    assert s.cold is not None and s.cold.target_peak.value == 60.0 * GIB
    stats = s.stats("target_peak")
    assert stats is not None and stats.values == (41.6 * GIB, 41.9 * GIB, 41.7 * GIB)
    assert (stats.min, stats.median, stats.max) == (41.6 * GIB, 41.7 * GIB, 41.9 * GIB)
    assert [name for name, _ in s.runs] == ["cold run", "warm run 1", "warm run 2", "warm run 3"]
    assert s.representative.target_peak.value == 41.7 * GIB  # the median-peak run
    assert s.as_measurement().target_peak == Figure(41.7 * GIB, "bytes", "nvml")


def test_figures_of_another_source_are_left_out_of_a_rows_statistics() -> None:
    s = Series.of([run(9.0), run(10.0), run(10.2), run(4.0, source="system_stats")])
    stats = s.stats("target_peak")
    assert stats is not None and stats.source == "nvml" and stats.n == 2


def test_a_row_no_run_measured_has_no_statistics() -> None:
    s = series(10.0, 10.0, 10.1)
    assert s.stats("node_peak_allocated") is None
    assert s.as_measurement().node_peak_allocated.value is None


def test_run_labels_name_the_cold_run_then_the_warm_ones() -> None:
    assert run_labels(2) == ["cold run", "warm run 1 of 2", "warm run 2 of 2"]
    assert cli.DEFAULT_RUNS == DEFAULT_RUNS == 3  # the CLI writes it out to stay light


# -- the rule -------------------------------------------------------------------------------


def test_a_difference_inside_the_spread_is_within_noise() -> None:
    assert judge(100.0, 92.0, spread=10.0, tolerance=0.05) == WITHIN_NOISE
    assert judge(100.0, 110.0, spread=10.0, tolerance=0.05) == WITHIN_NOISE  # equal: noise


def test_a_difference_beyond_the_spread_is_a_saving_or_a_cost() -> None:
    assert judge(100.0, 80.0, spread=10.0, tolerance=0.05) == SAVING
    assert judge(100.0, 120.0, spread=10.0, tolerance=0.05) == COST


def test_the_tolerance_is_the_floor_of_the_noise() -> None:
    """Runs that agree to the byte have no spread; 1% is still no saving worth the name."""
    assert judge(100.0, 99.0, spread=0.0, tolerance=0.05) == WITHIN_NOISE
    assert judge(100.0, 94.0, spread=0.0, tolerance=0.05) == SAVING


def test_one_run_judges_by_the_tolerance_alone() -> None:
    assert judge(10.0, 10.5, spread=None, tolerance=0.05) == WITHIN_NOISE  # 1.0500000000000003
    assert judge(10.0, 10.6, spread=None, tolerance=0.05) == COST
    assert judge(10.0, 9.2, spread=None, tolerance=0.10) == WITHIN_NOISE


def test_a_saving_above_the_noise_reads_as_today() -> None:
    c = compare(series(60.0, 41.6, 41.9, 41.7), series(15.0, 10.6, 10.7, 10.65))
    assert c.spread_known and (c.runs_before, c.runs_after) == (3, 3)
    r = c.row("target_peak")
    assert r.verdict == SAVING and r.spread == pytest.approx(0.3 * GIB)
    assert r.difference == pytest.approx(-31.05 * GIB)
    assert c.verdict == "saved 31.05 GiB (−74%) at the same time (within noise)"
    assert c.expect_saving(70) and not c.expect_saving(80)


def test_a_difference_within_the_spread_is_no_saving_and_expect_saving_counts_none() -> None:
    before, after = series(50.0, 30.0, 50.0, 40.0), series(50.0, 30.0, 35.0, 40.0)
    c = compare(before, after)  # medians 40 -> 35: −12.5%, inside a spread of 20 GiB
    assert c.row("target_peak").verdict == WITHIN_NOISE
    assert c.saving_pct == pytest.approx(12.5) and c.counted_saving_pct == 0.0
    assert c.verdict == (
        "within noise: −5.00 GiB against ±20.00 GiB (the larger spread of 3 and 3 warm runs)"
    )
    assert c.expect_saving(0) and not c.expect_saving(5)
    [problem] = c.problems(expect_saving=5)
    assert problem.startswith(
        "expected a saving of at least 5%, measured 12.5%, within the noise: counted as none"
    )


def test_a_cost_above_the_noise_is_said_so() -> None:
    c = compare(series(10.0, 10.0, 10.1, 10.05, wall=10.0), series(13.0, 12.0, 12.1, 12.05))
    assert c.row("target_peak").verdict == COST
    assert c.verdict == "used 2.00 GiB more (+20%) at the same time (within noise)"
    assert not c.expect_saving(0)


def test_a_small_steady_difference_is_within_the_tolerance_floor() -> None:
    c = compare(series(10.0, 10.0, 10.0, 10.0), series(10.0, 10.1, 10.1, 10.1))
    assert c.row("target_peak").spread == 0.0
    assert c.verdict == (
        "within noise: +0.10 GiB against ±0.50 GiB (±5% of before; the runs spread 0.00 GiB)"
    )


def test_time_beyond_its_noise_is_said_with_the_saving() -> None:
    before = Series.of([run(40.0, wall=w) for w in (30.0, 20.0, 20.2, 20.1)])
    after = Series.of([run(10.0, wall=w) for w in (30.0, 25.0, 25.1, 25.2)])
    c = compare(before, after)  # no node step time: the wall time is the time basis
    assert c.time_basis == "node_step_time"
    c = compare(
        Series.of([replace(m, node_step_time=Figure.none("s")) for m in before.warm]),
        Series.of([replace(m, node_step_time=Figure.none("s")) for m in after.warm]),
    )
    assert c.time_basis == "wall_s" and c.row("wall_s").verdict == COST
    assert c.verdict == "saved 30.00 GiB (−75%) at +25% time"


def test_one_run_a_side_keeps_todays_threshold_and_says_spread_unknown() -> None:
    c = compare(measured(10.0), measured(10.4))
    assert not c.spread_known and c.row("target_peak").spread is None
    assert c.verdict == "no significant change (±5%)"
    assert c.row("target_peak").words == "within ±5%"
    assert c.rule().startswith("spread unknown (1 run)")
    assert c.expect_saving(0) and not c.expect_saving(1)
    three_vs_one = compare(series(10.0, 10.0, 10.1, 10.2), measured(8.0))
    assert not three_vs_one.spread_known  # one run on either side: no spread is known
    assert three_vs_one.verdict.startswith("saved 2.10 GiB (−21%)")


def test_host_ram_is_a_row_compared_like_the_others() -> None:
    c = compare(series(10.0, 10.0, 10.0, 10.0, host_gib=3.0), series(9.0, 10.0, 10.0, 10.0))
    r = c.row("host_ram_peak")
    assert r.label == "host RAM peak, target's processes"
    assert r.before.source == "proc" and r.after.value is None and r.verdict == "n/a"
    up = compare(
        Series.of([run(10.0, host_gib=g) for g in (3.0, 3.0, 3.01, 3.02)]),
        Series.of([run(10.0, host_gib=g) for g in (5.0, 4.0, 4.01, 4.02)]),
    )
    assert up.row("host_ram_peak").verdict == COST
    assert up.row("target_peak").verdict == WITHIN_NOISE


# -- words and tables -------------------------------------------------------------------------


def test_the_comparison_table_prints_min_median_max_and_the_verdict_words() -> None:
    c = compare(series(60.0, 41.6, 41.9, 41.7), series(15.0, 10.6, 10.7, 10.65))
    lines = c.table().splitlines()
    target = next(line for line in lines if line.startswith("peak VRAM, target's processes"))
    assert target.split()[-9:] == [
        *("41.60", "41.70", "41.90", "10.60", "10.65", "10.70"),
        *("0.26×", "saving", "nvml"),
    ]
    step = next(line for line in lines if line.startswith("step time"))
    assert "within noise" in step
    assert lines[-3].startswith("saving / cost: the medians differ by more than the noise")
    assert lines[-2:] == [
        "runs before: cold completed; warm: completed ×3",
        "runs after: cold completed; warm: completed ×3",
    ]


def test_a_series_table_shows_the_cold_run_apart() -> None:
    lines = series(60.0, 41.6, 41.9, 41.7).table().splitlines()
    assert lines[0].split() == ["cold", "min", "median", "max", "source"]
    assert lines[1].split()[-5:] == ["60.00", "41.60", "41.70", "41.90", "nvml"]
    assert lines[-3].startswith("VRAM peak median 41.70 GiB (nvml; min 41.60 GiB, max 41.90")
    assert lines[-2:] == [
        "runs: cold completed; warm: completed ×3",
        "min / median / max over 3 warm runs; the cold run is not counted",
    ]
    one = series(60.0, 41.6)
    assert one.table().splitlines()[-1] == "spread unknown (1 run)"
    assert one.summary().endswith("; spread unknown (1 run)")


# -- JSON: what the ledger and --save keep, and what an older qpatch kept -------------------


def test_a_series_json_is_a_measurement_json_of_medians_with_every_run_under_series() -> None:
    s = Series.of([run(60.0, note="NVML: x"), run(41.6), run(41.9, note="NVML: x"), run(41.7)])
    d = json.loads(json.dumps(s.to_json()))
    assert d["target_peak"] == {"value": 41.7 * GIB, "unit": "bytes", "source": "nvml"}
    assert d["outcome"] == COMPLETED and d["notes"] == ["NVML: x"]
    assert d["series"]["warm_runs"] == 3 and d["series"]["spread_known"] is True
    assert d["series"]["outcomes"] == {"cold": "completed", "warm": ["completed"] * 3}
    figures = d["series"]["figures"]
    assert figures["target_peak"]["min"] == 41.6 * GIB and figures["node_peak_allocated"] is None
    assert d["series"]["cold"]["target_peak"]["value"] == 60.0 * GIB
    assert len(d["series"]["warm"]) == 3
    assert Series.from_json(d) == s
    # a reader of single runs gets the medians, and compares them as before
    assert Measurement.from_json(d).target_peak.value == 41.7 * GIB
    assert compare(d, series(15.0, 10.6, 10.7, 10.65).to_json()).spread_known


def test_an_older_single_run_json_reads_as_a_series_of_one() -> None:
    stored = measured(41.71).to_json()
    for key in ("outcome", "error", "host_ram_peak", "host_ram_not_measured"):
        del stored[key]
    s = as_series(stored)
    assert s.cold is None and len(s.warm) == 1 and not s.spread_known
    assert s.as_measurement().target_peak.value == 41.71 * GIB
    c = compare(stored, series(15.0, 10.6, 10.7, 10.65))
    assert not c.spread_known and c.verdict.startswith("saved")


def test_saved_baselines_old_and_new_load_as_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    s = series(60.0, 41.6, 41.9, 41.7)
    path = baselines.save("new", target="c", workflow="wf.json", measurement=s.to_json())
    assert json.loads(path.read_text())["measurement"]["series"]["warm_runs"] == 3
    assert Series.from_json(baselines.load("new")) == s

    folder = baselines.folder()
    runs = [measured(g).to_json() for g in (12.0, 10.0, 10.2)]  # `measure --runs 3` before
    old = {"name": "old", "measurement": runs[2], "runs": runs, "target": "c"}
    (folder / "old.json").write_text(json.dumps(old))
    loaded = Series.from_json(baselines.load("old"))
    assert loaded.cold is not None and loaded.cold.target_peak.value == 12.0 * GIB
    assert len(loaded.counted) == 2 and loaded.spread_known

    (folder / "one.json").write_text(json.dumps({"measurement": runs[0], "runs": runs[:1]}))
    assert Series.from_json(baselines.load("one")).as_measurement().target_peak.value == 12 * GIB

    (folder / "bad.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(BadInput, match="is not a saved measurement"):
        baselines.load("bad")
