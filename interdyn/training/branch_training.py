"""What every backbone's Lightning module does alike when it trains a control branch on frozen networks.

:class:`BranchTraining` is mixed into :class:`~interdyn.training.module.InterDynModule` (SVD) and
:class:`~interdyn.training.wan_module.InterDynWanModule` (Wan). It expects the module to hold its branch as
``self.controlnet`` (under the checkpoint prefix ``BRANCH_PREFIX``); its settings as ``self.hparams``
(``optimizer``, ``learning_rate``, ``adam_betas``, ``weight_decay``, ``ema_decay``, ``num_samples``,
``sample_seed``) and ``self.memory.fused_optimizer``; ``self._checked(batch)`` (a batch's clips and control,
checked) and ``self.sample(pixels, control, seed=...)`` (videos ``(B, N, T, 3, H, W)`` in ``[0, 1]``, one
seed or one per clip); a resumed run's step as ``self._resumed_step`` (set when a checkpoint is loaded). It
calls :meth:`BranchTraining.init_average` once its branch exists.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from interdyn.contract import has_clips
from interdyn.data.sampling import key_seed
from interdyn.errors import ConfigError
from interdyn.training.checkpoint import BRANCH_PREFIX
from interdyn.training.ema import swap_in, swap_out, update_average
from interdyn.training.optim import clip_unscaling_step, make_optimizer, unscales_in_step
from interdyn.utils.render import to_uint8


class BranchTraining:
    """Optimizer, gradient clipping, data-parallel and seeding hooks for a branch on frozen networks, and the
    branch's moving average (``ema_decay``): updated after every optimizer step, put into the branch while
    validation, test and prediction run (and the callbacks' sampling at epoch end), stored by checkpoints
    beside the last step's weights."""

    def init_average(self) -> None:
        """Start the moving average as a frozen copy of the branch when ``ema_decay`` > 0 (``branch_ema``, else
        None); every module calls this once its branch exists. The copy is registered under its own prefix:
        DDP ignores it (it is not ``controlnet.``) and checkpoints store it under ``EMA_KEY``, not in the state
        dict."""
        average = None
        if self.hparams.get("ema_decay", 0.0) > 0:
            average = copy.deepcopy(self.controlnet).requires_grad_(False).eval()
        self.branch_ema: torch.nn.Module | None = average
        self._live_backup: list[torch.Tensor] | None = None  # the live weights while the average is in use

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Everything but the branch, read by ``DistributedDataParallel`` when it wraps the module: the
        frozen model is neither broadcast at start-up (gigabytes of identical weights) nor has its buffers
        synchronised in forward passes, a collective that hangs validation when one rank has no batch."""
        return [
            name
            for name, _ in (*self.named_parameters(), *self.named_buffers())
            if not name.startswith(BRANCH_PREFIX)
        ]

    def average_state(self, checkpoint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """For ``on_save_checkpoint``: put the last step's weights back into ``checkpoint``'s state dict when
        it was taken while the average was in the branch (e.g. at the end of validation), and return a copy
        of the average's weights (None without one)."""
        if self._live_backup is not None:
            state = checkpoint["state_dict"]
            for (name, _), live in zip(self.controlnet.named_parameters(), self._live_backup, strict=True):
                state[BRANCH_PREFIX + name] = live.detach().clone()
        if self.branch_ema is None:
            return None
        return {k: v.detach().clone() for k, v in self.branch_ema.state_dict().items()}

    def setup(self, stage: str) -> None:
        """Refuse a moving average under sharded strategies, whose parameters are not the branch's own."""
        if self.branch_ema is None or self._trainer is None:
            return
        strategy = type(self.trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:
            raise ConfigError(
                f"ema_decay needs whole parameters on every rank; it does not work with {strategy} "
                "(use DDP or a single device, or set ema_decay 0)"
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the moving average's update."""
        super().optimizer_step(*args, **kwargs)
        if self.branch_ema is not None:  # global_step: the steps before this one (Lightning counts it after)
            update_average(self.branch_ema, self.controlnet, self.global_step, self.hparams.ema_decay)

    def _use_average(self, on: bool) -> None:
        """Put the moving average into the branch (``on``), or the saved live weights back."""
        if self.branch_ema is None or (self._live_backup is not None) == on:
            return
        if on:
            self._live_backup = swap_in(self.controlnet, self.branch_ema)
        else:
            swap_out(self.controlnet, self._live_backup)
            self._live_backup = None

    # Lightning runs the callbacks' hooks before the module's at the start and the end of a stage: the
    # average is in the branch for the callbacks' sampling at epoch end and out before training resumes.
    def _average_in(self) -> None:
        self._use_average(True)

    def _average_out(self) -> None:
        self._use_average(False)

    on_validation_start = on_test_start = on_predict_start = _average_in
    on_validation_end = on_test_end = on_predict_end = _average_out

    def on_fit_start(self) -> None:
        """Give each data-parallel rank its own random stream, and a resumed run a new one: ``seed_everything``
        seeds all ranks alike, and a resumed run like its start, which would draw the same noise levels, noise,
        image drops and (through the loader's seeds, drawn from this stream) the same clips and crops on every
        GPU and again after every resume. Lightning calls this after loading the checkpoint and before the
        training loader starts."""
        step = self.__dict__.get("_resumed_step", 0)
        if self.trainer.world_size > 1 or step > 0:
            seed = (torch.initial_seed() + 7919 * self.global_rank + 1_000_003 * step) % (2**63)
            torch.manual_seed(seed)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (lr 1e-5 in the paper), AdamW, Adam with its moments on the host, or 8-bit AdamW, on the
        branch's parameters only: the frozen parts get no optimizer state."""
        hp, fused = self.hparams, self.memory.fused_optimizer
        fused = fused if fused is not None else self.device.type == "cuda"
        params = [p for p in self.controlnet.parameters() if p.requires_grad]
        return make_optimizer(params, hp.optimizer, hp.learning_rate, hp.adam_betas, hp.weight_decay, fused)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip also with fused Adam. Lightning's mixed-precision plugin refuses to clip for an optimizer
        that unscales inside its step (fused kernels), even under bf16, which has no grad scaler."""
        if not gradient_clip_val or not unscales_in_step(optimizer):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        clip_unscaling_step(optimizer, scaler, gradient_clip_val, gradient_clip_algorithm)

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any] | None:
        """Sample videos for a batch, its clips together; returns ``{"key", "videos": (B, N, T, 3, H, W)
        uint8}`` on the host. Clips with keys are seeded by key (the same videos whatever the batch, rank
        or order), and those a prediction writer already holds (a callback with ``has_prediction(key, n)``,
        e.g. :class:`~interdyn.callbacks.VideoPredictionWriter`) are not sampled again, so a killed run
        resumes. Batches holding only records of skipped samples, or only written clips, give None."""
        if not has_clips(batch):
            return None
        pixels, control = self._checked(batch)
        keys = batch.get("key")
        if not keys:
            videos = self.sample(pixels, control, seed=self.hparams.sample_seed + batch_idx)
            return {"key": keys, "videos": to_uint8(videos).cpu()}
        n = self.hparams.num_samples
        writers = [c for c in self.trainer.callbacks if hasattr(c, "has_prediction")] if self._trainer else []
        todo = [
            i
            for i, key in enumerate(keys)
            if not writers or not all(w.has_prediction(key, n) for w in writers)
        ]
        if not todo:
            return None
        index = torch.tensor(todo, device=pixels.device)
        seeds = [key_seed(self.hparams.sample_seed, keys[i]) for i in todo]
        videos = self.sample(pixels.index_select(0, index), control.index_select(0, index), seed=seeds)
        return {"key": [keys[i] for i in todo], "videos": to_uint8(videos).cpu()}
