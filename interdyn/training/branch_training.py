"""What every backbone's Lightning module does alike when it trains a control branch on frozen networks.

:class:`BranchTraining` is mixed into :class:`~interdyn.training.module.InterDynModule` (SVD) and
:class:`~interdyn.training.wan_module.InterDynWanModule` (Wan). It expects the module to hold its branch as
``self.controlnet`` (under the checkpoint prefix ``BRANCH_PREFIX``), its settings as ``self.hparams``
(``optimizer``, ``learning_rate``, ``adam_betas``, ``weight_decay``) and ``self.memory.fused_optimizer``, and
a resumed run's step as ``self._resumed_step`` (set when a checkpoint is loaded).
"""

from __future__ import annotations

import torch

from interdyn.training.checkpoint import BRANCH_PREFIX
from interdyn.training.optim import clip_unscaling_step, make_optimizer, unscales_in_step


class BranchTraining:
    """Optimizer, gradient clipping, data-parallel and seeding hooks for a branch on frozen networks."""

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
