"""What the `aifixer` commands share, their own and those other packages add: parameter
types, and the error a person caused."""

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


class UserError(Exception):
    """An error a person caused (a bad file, a busy port, a setting): `aifixer` shows it as
    one line and exits 1, with no traceback. Packages that add commands raise it, or
    subclass it, for theirs."""
