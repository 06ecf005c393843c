"""User-facing errors: the CLI prints these as one paragraph, without a traceback."""

from __future__ import annotations


class InterDynError(Exception):
    """Base class of errors caused by the user's inputs (paths, weights, configs, data)."""


class WeightsNotFoundError(InterDynError, FileNotFoundError):
    """Model weights are missing at the given path or cannot be fetched from the hub."""


class WeightsMismatchError(InterDynError, ValueError):
    """A checkpoint's tensors do not match the model they are loaded into."""


class BatchContractError(InterDynError, ValueError):
    """A batch violates the data/module contract (keys, shapes, dtypes or value ranges)."""


class ConfigError(InterDynError, ValueError):
    """Inconsistent or invalid configuration values."""


class InputError(InterDynError, ValueError):
    """An input of ``interdyn generate`` (image, clip, control masks) is missing, unreadable or unusable."""


class EvaluationError(InterDynError, RuntimeError):
    """An evaluation cannot give a result (e.g. no test clip could be scored)."""


class UnsafeCheckpointError(InterDynError, ValueError):
    """A checkpoint is not weights-only (it could run code when unpickled) or is not a checkpoint at all."""


class DataNotFoundError(InterDynError, FileNotFoundError):
    """Configured data (shards) do not exist, or none of it can be read."""
