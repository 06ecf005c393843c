"""Moved to :mod:`interdyn.inputs` (``generate``'s reader, not training data); this name is kept for
callers that still import it from here."""

from interdyn.inputs import *  # noqa: F403
from interdyn.inputs import __all__  # noqa: F401
