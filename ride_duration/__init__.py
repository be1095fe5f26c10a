"""Ride-duration deployment: shared code for the notebooks and the runnable folders.

Modules that serving imports (``features``, ``compact``, ``rides``) stay light: no pandas,
no MLflow. Heavy libraries are imported inside the functions that use them.
"""
