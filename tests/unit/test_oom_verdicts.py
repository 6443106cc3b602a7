"""The out-of-memory case as figures and words: a baseline that ran out is a result, a
patched run that completes is the saving users came for, and a node's malformed figures
are dropped with a note instead of crashing or faking a number. A killed run (the server
died or was restarted under it, or ComfyUI cut it) is a result too, that measured nothing."""

from __future__ import annotations

from dataclasses import replace

from qpatch.vram import GIB, NO_GPU, Series, compare
from qpatch.vram.figures import COMPLETED, KILLED, OUT_OF_MEMORY, Measurement
from qpatch.vram.protocol import RunFailure, checked_node_report, run_failure
from qpatch.workflow import WorkflowRun
from tests.unit.test_vram import measured


def oom(m: Measurement) -> Measurement:
    return replace(m, outcome=OUT_OF_MEMORY, error="CUDA out of memory. Tried to allocate 2 GiB")


def test_an_oom_baseline_then_a_completed_run_is_the_saving() -> None:
    before = replace(oom(measured(79.2)), device_total=measured(80).device_peak)
    c = compare(before, measured(10.2))
    assert c.fixes_oom
    assert (
        c.verdict
        == "before: out of memory at 79.20 GiB (limit 80.0); after: completes, peak 10.20 GiB"
    )
    assert c.expect_saving(50) and c.expect_saving(99.9)
    assert c.problems(expect_saving=50, require_vram=True) == []
    assert c.to_json()["before_outcome"] == OUT_OF_MEMORY
    assert c.to_json()["after_outcome"] == COMPLETED


def test_out_of_memory_both_times_is_no_saving() -> None:
    c = compare(oom(measured(79.2)), oom(measured(79.5)))
    assert not c.fixes_oom
    assert c.verdict.endswith("after: still out of memory")


def test_on_a_cpu_the_oom_is_still_said_though_vram_is_not_measured() -> None:
    cpu = {"not_measured": NO_GPU, "source": "system_stats", "device_type": "cpu"}
    c = compare(oom(measured(1.0, **cpu)), measured(1.0, **cpu))
    assert c.fixes_oom
    assert c.verdict == (
        f"before: out of memory peak not measured ({NO_GPU}); after: completes, peak n/a"
    )
    assert c.problems(expect_saving=50) == []
    assert c.problems(expect_saving=50, require_vram=True) != []  # VRAM was asked for


def test_the_oom_measurement_summary_and_json_round_trip() -> None:
    m = replace(oom(measured(79.2)), device_total=measured(80).device_peak)
    assert m.summary() == "out of memory: at 79.20 GiB (limit 80.0)"
    again = Measurement.from_json(m.to_json())
    assert again.out_of_memory and again.error == m.error


def test_an_older_stored_measurement_reads_as_completed() -> None:
    stored = measured(10.0).to_json()
    del stored["outcome"], stored["error"]
    assert Measurement.from_json(stored).outcome == COMPLETED


def run(status: str, messages: list) -> WorkflowRun:
    return WorkflowRun("p1", 1.0, status, {}, messages)


def test_run_failures_tell_out_of_memory_from_other_errors() -> None:
    def error(kind: str, message: str) -> list:
        info = {"node_type": "Loader", "exception_type": kind, "exception_message": message}
        return [["execution_start", {}], ["execution_error", info]]

    assert run_failure(run("success", [])) is None
    oom_by_type = run_failure(run("error", error("torch.OutOfMemoryError", "x")))
    assert oom_by_type is not None and oom_by_type.out_of_memory
    rethrown = run_failure(run("error", error("RuntimeError", "CUDA out of memory. Tried")))
    assert rethrown is not None and rethrown.out_of_memory
    other = run_failure(run("error", error("ValueError", "width 60 is not divisible by 7")))
    assert other == RunFailure("Loader", "ValueError", "width 60 is not divisible by 7")
    assert not other.out_of_memory
    assert str(other) == "Loader: width 60 is not divisible by 7"
    unknown = run_failure(run("error", []))
    assert unknown is not None and not unknown.out_of_memory


def test_malformed_node_figures_are_dropped_with_a_note() -> None:
    node = {
        "peak_allocated_bytes": "9 GiB",
        "step_time_s": -1.0,
        "output_checksum": float("nan"),
        "loads": 1,
    }
    kept, notes = checked_node_report(node)
    assert kept == {"loads": 1}
    assert len(notes) == 3 and all("ignored" in n for n in notes)
    assert checked_node_report({"step_time_s": True})[0] == {}
    good = {"peak_allocated_bytes": 9 * GIB, "step_time_s": 0.16, "output_checksum": -3.5}
    assert checked_node_report(good) == (good, [])
    assert checked_node_report(None) == (None, [])


# -- a killed run: the server died, was restarted, or ComfyUI cut the run -----------------


def killed(m: Measurement, why: str = "the server stopped during the run (exited)") -> Measurement:
    return replace(m, outcome=KILLED, error=why)


def test_an_interrupted_run_is_killed_not_an_unknown_error() -> None:
    info = {"prompt_id": "p1", "node_id": "1", "node_type": "QwenImageLoader"}
    cut = run_failure(run("error", [["execution_start", {}], ["execution_interrupted", info]]))
    assert cut == RunFailure(
        "QwenImageLoader", "killed", "ComfyUI says the run was interrupted at QwenImageLoader"
    )
    assert cut.killed and not cut.out_of_memory


def test_a_killed_run_makes_the_series_killed_and_names_the_run() -> None:
    s = Series.of([measured(10.0), measured(10.1), killed(measured(3.0))])
    assert s.outcome == KILLED and s.killed
    assert s.killed_run is not None and s.killed_run[0] == "warm run 2"
    assert s.counted == [measured(10.1)]  # a killed run's figures are never counted
    assert s.summary() == "killed: warm run 2: the server stopped during the run (exited)"
    assert s.outcome_words() == "cold completed; warm: completed, killed"
    assert Series.from_json(s.to_json()) == s


def test_a_killed_side_is_not_compared_and_never_an_expected_saving() -> None:
    before = Series.of([measured(40.0)] * 4)
    c = compare(before, Series.of([measured(10.0), killed(measured(2.0))]))
    assert c.after_outcome == KILLED
    assert c.verdict.startswith("not compared: the after series was killed (warm run 1: ")
    assert not c.expect_saving(0) and not c.fixes_oom
    assert c.problems(expect_saving=10) != []


def test_an_out_of_memory_series_counts_the_runs_that_ran_out() -> None:
    limit = measured(80).device_peak
    runs = [oom(replace(measured(g), device_total=limit)) for g in (79.0, 79.2, 79.6, 79.4)]
    s = Series.of(runs)
    assert s.outcome == OUT_OF_MEMORY and len(s.counted) == 3
    stats = s.stats("target_peak")
    assert stats is not None and stats.median == 79.4 * GIB
    assert s.summary() == "out of memory (3 of 3 warm runs): at 79.40 GiB (limit 80.0)"
    c = compare(s, Series.of([measured(10.0)] * 4))
    assert c.fixes_oom and c.expect_saving(99)
    assert c.verdict.startswith("before: out of memory at 79.40 GiB (limit 80.0); after: completes")


def test_one_warm_run_out_of_memory_makes_the_series_out_of_memory() -> None:
    """A workflow that fits two times in three does not fit; the cold run is apart."""
    s = Series.of([oom(measured(79.0)), measured(10.0), oom(measured(79.0)), measured(10.2)])
    assert s.outcome == OUT_OF_MEMORY
    assert s.counted == [oom(measured(79.0))]
    assert s.outcome_words() == "cold out of memory; warm: completed, out of memory, completed"
    fine = Series.of([oom(measured(79.0)), measured(10.0), measured(10.2)])
    assert fine.outcome == COMPLETED  # only the cold run ran out: reported, not counted


def test_a_server_that_stopped_or_restarted_under_the_run_is_named() -> None:
    from qpatch.targets.base import TargetState
    from qpatch.vram.protocol import _stopped

    start = TargetState(True, 0, "running")
    assert _stopped(TargetState(True, 0, "running"), start) is None
    assert _stopped(None, start) is None  # the target could not say: not a kill
    assert _stopped(TargetState(False, 0, "exited (exit code 137)"), start) == (
        "the server stopped during the run (exited (exit code 137))"
    )
    assert _stopped(TargetState(True, 2, "running"), start) == (
        "the server was restarted during the run (2x)"
    )
    assert _stopped(TargetState(True, 2, "running"), None) is None


def test_each_run_of_a_series_is_said_in_a_line() -> None:
    assert measured(10.0).brief() == "peak VRAM 10.00 GiB (nvml), run time 12.0 s"
    host = replace(measured(10.0), host_ram_peak=measured(3.0).target_peak)
    assert host.brief() == "peak VRAM 10.00 GiB (nvml), host RAM 3.00 GiB, run time 12.0 s"
    cpu = measured(4.0, source="system_stats", device_type="cpu", not_measured=NO_GPU)
    assert cpu.brief().startswith("peak RAM (cpu, not VRAM) 4.00 GiB (system_stats)")
    assert killed(measured(1.0)).brief() == "killed: the server stopped during the run (exited)"
