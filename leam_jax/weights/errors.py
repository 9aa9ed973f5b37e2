"""The one base class of every weights error, so the CLI turns each into one line and exit code 2."""


class WeightsError(RuntimeError):
    """Weights cannot be used: missing, unverifiable, or not the pinned bytes (the message names the file)."""
