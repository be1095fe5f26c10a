"""AWS Lambda entry point: ride events from Kinesis in, ride-duration predictions out.

Configured by environment variables (see ride_duration.streaming): the model comes from
MODEL_LOCATION, or from RUN_ID + MLFLOW_EXPERIMENT_ID + MODEL_BUCKET; predictions go to
PREDICTIONS_STREAM_NAME [ride_predictions]; TEST_RUN=True writes nothing. A malformed record
is logged, listed under "rejected" and returned in batchItemFailures (MALFORMED_RECORDS
[report], Lambda's contract); MALFORMED_RECORDS=reject keeps it out of batchItemFailures, so
that Lambda never re-delivers the valid records behind it.

The model is loaded here, at import: Lambda runs that once per container, in its init
phase, and every invocation reuses it. Only numpy and boto3 are imported (no scikit-learn,
pandas or MLflow), so the cold start stays well inside Lambda's defaults: see Performance in
the repository's README.
"""

from ride_duration.streaming import service_from_env

SERVICE = service_from_env()


def lambda_handler(event, context):
    """Predict every ride of a Kinesis batch with one model call and write the predictions.

    Returns {"predictions": [...], "batchItemFailures": [{"itemIdentifier": seq}, ...],
    "rejected": [{"itemIdentifier": seq, "reason": ...}, ...]}; Lambda reads only
    batchItemFailures (ReportBatchItemFailures must be on in the event-source mapping): the
    undelivered predictions' records and, unless MALFORMED_RECORDS=reject, the malformed ones.
    """
    return SERVICE.handle(event)
