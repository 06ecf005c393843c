"""The samplers of :class:`~interdyn.models.pipeline.InterDynPipeline`, built over SVD's noise range."""

from __future__ import annotations

from typing import Any

from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler

from interdyn.models.sampling import SCHEDULERS


def make_scheduler(name: str, svd_scheduler: EulerDiscreteScheduler) -> Any:
    """A sampler over SVD's noise range (``sigma_min``..``sigma_max`` of its scheduler, Karras spacing).

    - ``euler``: SVD's own scheduler (what the paper used);
    - ``dpmpp_2m``: DPM-Solver++(2M), second order, for fewer steps;
    - ``edm_euler``: diffusers' EDM Euler, the same sampler as ``euler`` built the EDM way (a check).

    The EDM schedulers use SVD's preconditioning (``sigma_data = 1``, v-prediction, ``c_noise = log(sigma) / 4``),
    so the denoising loop stays the same for all three.
    """
    if name == "euler":
        return svd_scheduler
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")
    config = svd_scheduler.config
    common = {
        "sigma_min": float(config.get("sigma_min") or 0.002),
        "sigma_max": float(config.get("sigma_max") or 700.0),
        "sigma_data": 1.0,
        "prediction_type": config.get("prediction_type", "v_prediction"),
        "sigma_schedule": "karras",
    }
    if name == "edm_euler":
        return EDMEulerScheduler(**common)
    return EDMDPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++")
