"""Parameter types shared by the `aifixer` commands (cli.py and bench.py)."""

from __future__ import annotations

import math

import click


class PositiveFloat(click.ParamType):
    """A finite number above zero: a speed-up or a number of seconds."""

    name = "float"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} must be a finite number above 0", param, ctx)
        return number


POSITIVE = PositiveFloat()
PORT = click.IntRange(1, 65535)
