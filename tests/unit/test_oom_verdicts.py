"""The out-of-memory case as figures and words: a baseline that ran out is a result, a
patched run that completes is the saving users came for, and a node's malformed figures
are dropped with a note instead of crashing or faking a number."""

from __future__ import annotations

from dataclasses import replace

from qpatch.vram import GIB, NO_GPU, compare
from qpatch.vram.figures import COMPLETED, OUT_OF_MEMORY, Measurement
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
