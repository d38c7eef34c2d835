"""Kubernetes resource quantities (`500m`, `128Mi`, `1.5G`, `2e3`) as exact decimals.

The simulated scheduler and kubelet compare requests, limits and usage the way the real
ones do, so the parsing rules (and the error text the API server returns for a malformed
quantity) follow `k8s.io/apimachinery/pkg/api/resource`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

QUANTITY_REGEX = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
FORMAT_ERROR = f"quantities must match the regular expression '{QUANTITY_REGEX}'"

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_SHAPE = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)$")
_EXPONENT = re.compile(r"^[eE][+-]?[0-9]+$")


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity; str() is the API server's message."""

    def __init__(self) -> None:
        super().__init__(FORMAT_ERROR)


def parse_quantity(value: str | int | float) -> Decimal:
    """Exact value of a quantity: `"128Mi"` -> 134217728, `"250m"` -> Decimal("0.25")."""
    if isinstance(value, bool):
        raise QuantityError()
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _SHAPE.match(value)
    if not match:
        raise QuantityError()
    sign, whole, fraction, suffix = match.groups()
    if not whole and not fraction:
        raise QuantityError()
    try:
        number = Decimal(f"{sign}{whole or '0'}.{fraction or '0'}")
    except InvalidOperation as exc:
        raise QuantityError() from exc
    return number * _multiplier(suffix)


def _multiplier(suffix: str) -> Decimal:
    if suffix in _BINARY:
        return Decimal(1024) ** _BINARY[suffix]
    if suffix in _DECIMAL:
        return Decimal(10) ** _DECIMAL[suffix]
    if _EXPONENT.match(suffix):
        return Decimal(10) ** int(suffix[1:])
    raise QuantityError()


def is_quantity(value: object) -> bool:
    try:
        parse_quantity(value)  # type: ignore[arg-type]
    except (QuantityError, TypeError):
        return False
    return True


def cpu_millicores(value: str | int | float) -> int:
    """CPU in millicores, rounded up as the kubelet does (`"0.1"` -> 100, `"1"` -> 1000)."""
    return math.ceil(parse_quantity(value) * 1000)


def memory_bytes(value: str | int | float) -> int:
    """Memory in bytes, rounded up (`"1Gi"` -> 1073741824, `"1.5k"` -> 1500)."""
    return math.ceil(parse_quantity(value))


def format_binary(num_bytes: int | Decimal) -> str:
    """Canonical binary-SI text of a byte count: 134217728 -> `128Mi`, 1500 -> `1500`."""
    value = Decimal(num_bytes)
    if value != value.to_integral_value():
        return format_decimal(value)
    for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
        unit = Decimal(1024) ** power
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(int(value))


def format_decimal(value: int | Decimal) -> str:
    """Canonical decimal-SI text: the largest SI suffix with an integral mantissa.

    Decimal("0.25") -> `250m`, 2000 -> `2k`, 1500 -> `1500`; finer than a nano-unit rounds up.
    """
    value = Decimal(value)
    if value == 0:
        return "0"
    for suffix, power in sorted(_DECIMAL.items(), key=lambda item: -item[1]):
        scaled = value / (Decimal(10) ** power)
        if scaled == scaled.to_integral_value():
            return f"{int(scaled)}{suffix}"
    return f"{math.ceil(value * Decimal(10) ** 9)}n"


def format_millicores(millicores: int) -> str:
    """`format_millicores(1500)` -> `1500m`, `2000` -> `2` (the kubelet's usual rendering)."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"
