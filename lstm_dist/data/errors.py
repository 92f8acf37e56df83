"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data, or a data config that does not fit the data.

    The message names the file, column, series or row at fault and the config key that fixes it.
    """
