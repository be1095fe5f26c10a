"""Validation of incoming rides, shared by the web services and the stream consumer.

A ride is a JSON object with PULocationID and DOLocationID (integers 1..265, the TLC's
zones) and trip_distance (miles, a finite number from 0 to MAX_TRIP_DISTANCE). Extra
fields are ignored. Errors name the field, so a client can fix its request.
"""

from __future__ import annotations

import math

from ride_duration.features import RIDE_FIELDS

MIN_LOCATION_ID, MAX_LOCATION_ID = 1, 265
# Longer than any taxi ride in New York; the TLC's files hold typos far above it.
MAX_TRIP_DISTANCE = 500.0


class InvalidRide(ValueError):
    """A ride that cannot be scored; str() says which field is wrong and why."""


def validate_ride(ride, where: str = "ride") -> dict:
    """Return the ride's three fields, checked and normalised, or raise InvalidRide."""
    if not isinstance(ride, dict):
        raise InvalidRide(f"{where} must be a JSON object with {', '.join(RIDE_FIELDS)}, got {_json_type(ride)}")
    missing = [name for name in RIDE_FIELDS if name not in ride]
    if missing:
        raise InvalidRide(f"{where} is missing field(s): {', '.join(missing)}")
    clean = {}
    for name in ("PULocationID", "DOLocationID"):
        value = ride[name]
        # bool is an int in Python, and a float like 130.0 is accepted only when whole.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRide(f"{where}.{name} must be an integer zone id, got {_json_type(ride[name])}")
        if not MIN_LOCATION_ID <= value <= MAX_LOCATION_ID:
            raise InvalidRide(f"{where}.{name} must be between {MIN_LOCATION_ID} and {MAX_LOCATION_ID}, got {value}")
        clean[name] = value
    distance = ride["trip_distance"]
    if isinstance(distance, bool) or not isinstance(distance, (int, float)):
        raise InvalidRide(f"{where}.trip_distance must be a number of miles, got {_json_type(distance)}")
    if isinstance(distance, float) and not math.isfinite(distance):
        raise InvalidRide(f"{where}.trip_distance must be finite, got {distance}")
    try:
        miles = float(distance)
    except OverflowError:  # an integer too large for a float
        miles, distance = math.inf, "a number too large"
    if not 0 <= miles <= MAX_TRIP_DISTANCE:
        raise InvalidRide(f"{where}.trip_distance must be between 0 and {MAX_TRIP_DISTANCE:g} miles, got {distance}")
    clean["trip_distance"] = miles
    return clean


def _json_type(value) -> str:
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
    return repr(value)
