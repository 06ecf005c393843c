"""A callback that prints where a run's wall time went: start-up, setup, training, validation, testing.

`interdyn fit` / `validate` / `test` / `predict` add it to every trainer. At the end of the run (on the
first rank only) it prints one line per phase (``interdyn.utils.timing.PhaseTimes``) with the steps or clips
each phase covered, so that a slow run shows its slow part without a profiler.
"""

from __future__ import annotations

import time

import lightning as L

from interdyn.utils.timing import PhaseTimes

# Set by `interdyn.commands.cli.main` when the command starts, so that imports and building the model count.
COMMAND_STARTED: list[float] = []


class PhaseTimer(L.Callback):
    """Times the trainer's phases and prints them when the run ends (also when it is interrupted)."""

    def __init__(self) -> None:
        self.times: PhaseTimes | None = None
        self._marks: dict[str, float] = {}
        self._steps_at_start = 0
        self._test_batches = 0

    def _start(self, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def _stop(self, name: str, detail: str | None = None) -> None:
        start = self._marks.pop(name, None)
        if start is not None and self.times is not None:
            self.times.add(name, time.perf_counter() - start, detail)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        now = time.perf_counter()
        stage = getattr(stage, "value", stage)  # Lightning may pass its TrainerFn enum, not the string
        self.times = PhaseTimes(f"interdyn {stage}")
        if COMMAND_STARTED:
            self.times.started = COMMAND_STARTED[0]
            self.times.add("start-up (imports, config, model)", now - COMMAND_STARTED[0])
        self._marks["setup (weights, data)"] = now

    def _end_setup(self) -> None:
        self._stop("setup (weights, data)")

    # fit
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_setup()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("sanity check")

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop("sanity check")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps_at_start = trainer.global_step
        self._start("training")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_setup()
        if trainer.sanity_checking:
            return
        self._pause_training(trainer)
        self._start("validation")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._stop("validation")
        if trainer.training:
            self._start("training")

    def _pause_training(self, trainer: L.Trainer) -> None:
        if "training" in self._marks:
            self._stop("training")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause_training(trainer)
        if self.times is not None and "training" in self.times.seconds:
            steps = trainer.global_step - self._steps_at_start
            secs = self.times.seconds["training"]
            rate = f", {steps / secs:.2f} it/s" if secs > 0 and steps > 0 else ""
            self.times.details["training"] = f"{steps} steps{rate}"
            self.times.counts["training"] = 1

    # test / validate / predict as their own commands
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_setup()
        self._test_batches = 0
        self._start("testing (sampling, metrics)")

    def on_test_batch_end(self, *args: object, **kwargs: object) -> None:
        # counted: a streaming test loader has no length (num_test_batches is infinite)
        self._test_batches += 1

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop("testing (sampling, metrics)", f"{self._test_batches} batches")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_setup()
        self._start("prediction")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop("prediction")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "validate" and "validation" in self._marks:
            self._stop("validation")
        self._end_setup()
        if self.times is not None and trainer.is_global_zero:
            print("\n" + self.times.table(), flush=True)
        self.times = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for name in list(self._marks):
            self._stop(name, "interrupted")
