"""Errors raised for bad input. Each message says what was wrong and what was expected."""


class LpntkError(Exception):
    """Base of every error lpntk raises on purpose (the CLI prints these without a traceback)."""


class DataError(LpntkError, ValueError):
    """A dataset is missing, corrupt, truncated, or does not match what was asked for."""


class ConfigError(LpntkError, ValueError):
    """An unknown name, an impossible option, or a model/dataset mismatch."""
