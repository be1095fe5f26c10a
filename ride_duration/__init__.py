"""Ride-duration deployment: shared code for the notebooks and the runnable folders.

Modules that serving imports (``features``, ``compact``, ``rides``) stay light: no pandas,
no MLflow. Heavy libraries are imported inside the functions that use them.

What only runs the lessons on one machine (stand-ins, demos, the local Kinesis event source)
is ``ride_duration.local``: no image ships it, and no module here imports it.
"""
