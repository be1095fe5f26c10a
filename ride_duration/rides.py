"""Validation of incoming rides, shared by the web services and the stream consumer.

A ride is a JSON object with the raw fields ride_duration.features declares (RAW_FIELDS):
today PULocationID and DOLocationID (integers 1..265, the TLC's zones) and trip_distance
(miles, a finite number from 0 to 100). Each field is checked as its declaration says, so a
field added there is validated here too. Extra fields are ignored. Errors name the field, so
a client can fix its request.
"""

from __future__ import annotations

import math

from ride_duration import features
from ride_duration.features import RawField


class InvalidRide(ValueError):
    """A ride that cannot be scored; str() says which field is wrong and why."""


def validate_ride(ride, where: str = "ride") -> dict:
    """Return the ride's raw fields, checked and normalised, or raise InvalidRide."""
    fields = features.RAW_FIELDS  # looked up per call, so a notebook or test may swap the declaration
    if not isinstance(ride, dict):
        raise InvalidRide(f"{where} must be a JSON object with {', '.join(fields)}, got {json_type(ride)}")
    missing = [name for name in fields if name not in ride]
    if missing:
        raise InvalidRide(f"{where} is missing field(s): {', '.join(missing)}")
    return {name: CHECKS[field.kind](ride[name], field, f"{where}.{name}") for name, field in fields.items()}


def _integer(value, field: RawField, where: str) -> int:
    given = value
    # bool is an int in Python, and a float like 130.0 is accepted only when whole.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRide(f"{where} must be {field.what}, got {json_type(given)}")
    if not field.minimum <= value <= field.maximum:
        raise InvalidRide(f"{where} must be between {_range(field)}, got {value}")
    return value


def _number(value, field: RawField, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRide(f"{where} must be {field.what}, got {json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRide(f"{where} must be finite, got {value}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number, value = math.inf, "a number too large"
    if not field.minimum <= number <= field.maximum:
        raise InvalidRide(f"{where} must be between {_range(field)}, got {value}")
    return number


CHECKS = {"integer": _integer, "number": _number}


def _range(field: RawField) -> str:
    """The bounds as errors print them, whole ones without a decimal point: 0 and 100 miles."""
    low, high = (str(int(b)) if float(b).is_integer() else str(b) for b in (field.minimum, field.maximum))
    return f"{low} and {high} {field.unit}".rstrip()


def json_type(value) -> str:
    """What a decoded JSON value is, for error messages: "null", "a string ('far')", "a number (10.5)"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return f"a number ({text if len(text) <= 20 else text[:17] + '...'})"
