"""The streaming deployment end to end on the stand-ins, in one call (demo and notebook).

Heavier than ride_duration.streaming on purpose: it starts the stand-ins, reads TLC rides
with pandas and fetches the registered model through MLflow. The Lambda never imports it.
"""

from __future__ import annotations


def sample_rides(
    count: int, taxi_type: str = "green", year: int = 2021, month: int = 2
) -> tuple[list[dict], list[str]]:
    """The month's first `count` clean rides and stable ids for them ("green-2021-02-<row>")."""
    from ride_duration.data import read_trips
    from ride_duration.features import RIDE_FIELDS

    frame = read_trips(taxi_type, year, month)[0].head(count)
    ids = [f"{taxi_type}-{year:04d}-{month:02d}-{row}" for row in frame.index]
    return frame[list(RIDE_FIELDS)].to_dict("records"), ids


def registered_model_location() -> str:
    """The S3 address of the registered model's compact export (trained first if needed)."""
    from ride_duration import registry

    return registry.ensure_registered_model().compact_uri


def demo(n_rides: int = 300) -> str:
    """Stream `n_rides` real rides through the handler on the stand-ins; returns a one-line summary."""
    from ride_duration import streaming
    from ride_duration.local import event_source, standins
    from ride_duration.models import load_compact

    standins.ensure()
    model = load_compact(registered_model_location())
    service = streaming.PredictionService(model, streaming.KinesisWriter(streaming.predictions_stream()))
    rides, ride_ids = sample_rides(n_rides)
    entries = event_source.ride_entries(rides, ride_ids)
    result = event_source.run_loop(lambda event, context: service.handle(event), entries)
    by_id = {p["prediction"]["ride_id"]: p["prediction"]["ride_duration"] for p in result.predictions}
    examples = ", ".join(f"{i}: {by_id[i]:.1f} min" for i in ride_ids[:3] if i in by_id)
    return (
        f"{len(by_id)}/{n_rides} rides predicted via Kinesis + handler on the stand-ins "
        f"in {result.invocations} batches ({examples})"
    )
