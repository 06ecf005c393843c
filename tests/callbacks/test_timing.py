"""Time by phase: the table a long command prints, and the demo runner's steps side by side."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from interdyn.utils.timing import PhaseTimes, command_start, format_seconds, per_second, process_age
from interdyn.world import demo


def test_phases_add_up_in_order_and_repeats_are_counted() -> None:
    times = PhaseTimes("interdyn fit")
    times.add("setup", 2.0)
    times.add("training", 30.0, "60 steps, 2.00 it/s")
    times.add("validation", 1.5)
    times.add("validation", 2.5)
    with times.phase("export"):
        time.sleep(0.01)
    lines = times.table().splitlines()
    assert lines[0] == "interdyn fit: time by phase"
    names = [line.split()[0] for line in lines[1:]]
    assert names[:4] == ["setup", "training", "validation", "export"]
    assert "4.0 s" in lines[3] and "(2 runs)" in lines[3]
    assert "(60 steps, 2.00 it/s)" in lines[2]
    assert times.seconds["export"] >= 0.01
    assert lines[-1].split()[0] == "total"


def test_time_not_in_any_phase_shows_as_other() -> None:
    times = PhaseTimes("x")
    times.started -= 100.0
    times.add("a", 10.0)
    assert "other" in times.table()
    assert format_seconds(125) == "2 min 05 s" and format_seconds(8.06) == "8.1 s"


def test_process_age_is_this_process_lifetime() -> None:
    age = process_age()
    assert 0.0 < age < 24 * 3600
    assert time.perf_counter() - command_start(True) >= age - 0.1  # a command's time counts its imports
    assert time.perf_counter() - command_start(False) < 1.0  # called in-process: from now


def test_phases_timed_in_pieces_show_no_run_count_and_rates_read_plainly() -> None:
    times = PhaseTimes("data_prep.latents")
    for _ in range(3):  # per sample
        times.add("decoding clips", 0.5, runs=0)
    times.details["encoding"] = per_second(8, "samples", 2.0)
    times.add("encoding", 2.0)
    lines = times.table().splitlines()
    assert lines[1].split() == ["decoding", "clips", "1.5", "s"]  # no "(3 runs)"
    assert lines[2].endswith("(8 samples, 4.00 samples/s)")
    assert per_second(0, "clips", 0.0) == "0 clips"


def _step(name: str, code: str) -> demo.Step:
    return demo.Step(name, (sys.executable, "-c", code))


def test_the_side_steps_run_beside_the_main_one_and_each_is_timed(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    main = _step("main", f"import time; time.sleep(2.0); open({str(marks)!r}, 'a').write('main\\n')")
    side = [
        _step(f"side {i}", f"import time; time.sleep(0.8); open({str(marks)!r}, 'a').write('side{i}\\n')")
        for i in range(2)
    ]
    times = PhaseTimes("demo")
    started = time.perf_counter()
    demo.run_beside(main, side, times, tmp_path / "logs", cores=2)
    wall = time.perf_counter() - started
    assert marks.read_text().split() == ["side0", "side1", "main"]  # the side steps finished while main ran
    assert wall < 3.4  # side by side: one after the other, the sleeps alone take 3.6 s
    assert set(times.seconds) == {"main", "side 0", "side 1"}
    assert times.seconds["main"] >= 2.0
    assert (tmp_path / "logs" / "side_0.log").exists()


def test_a_failing_step_stops_the_demo_with_its_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marks = tmp_path / "marks"
    main = _step("main", f"import time; time.sleep(1.5); open({str(marks)!r}, 'a').write('main\\n')")
    side = [_step("broken test", "import sys; print('the reason'); sys.exit(3)")]
    with pytest.raises(SystemExit, match=r"`broken test` failed \(exit code 3\)"):
        demo.run_beside(main, side, PhaseTimes("demo"), tmp_path / "logs", cores=2)
    assert "the reason" in capsys.readouterr().err
    time.sleep(2.0)
    assert not marks.exists()  # the main step was stopped with the demo, not left running


def test_the_demo_accounts_for_the_install_and_clips_made_by_make(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    started = time.time() - 30
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-core-stamp").touch()
    index = tmp_path / demo.WORLD / "test" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text("{}")
    times = PhaseTimes("make demo")
    demo.account_make(times, started, venv)
    assert list(times.seconds) == ["install", "world clips"]
    assert 29 <= times.seconds["install"] <= 32
    assert times.total() >= 30  # the total counts from make's start


@pytest.mark.parametrize("stage", ["test", "fit"])
def test_the_table_names_the_command_whether_lightning_passes_a_string_or_its_enum(stage: str) -> None:
    from lightning.pytorch.trainer.states import TrainerFn

    from interdyn.callbacks.timing import PhaseTimer

    for given in (stage, TrainerFn(stage if stage == "fit" else "test")):
        timer = PhaseTimer()
        timer.setup(None, None, given)
        assert timer.times.table().splitlines()[0] == f"interdyn {stage}: time by phase"
