"""AWS Lambda entry point: ride events from Kinesis in, ride-duration predictions out.

Configured by environment variables (see ride_duration.streaming): the model comes from
MODEL_LOCATION, or from RUN_ID + MLFLOW_EXPERIMENT_ID + MODEL_BUCKET; predictions go to
PREDICTIONS_STREAM_NAME [ride_predictions]; TEST_RUN=True writes nothing. A malformed record
is logged, listed under "rejected" and returned in batchItemFailures (MALFORMED_RECORDS
[report], Lambda's contract); MALFORMED_RECORDS=reject keeps it out of batchItemFailures, so
that Lambda never re-delivers the valid records behind it.

Only numpy and boto3 are imported (no scikit-learn, pandas or MLflow), so the cold start
stays well inside Lambda's defaults: see Performance in the repository's README.
"""

from ride_duration import streaming
from ride_duration.models import load_model

# At import, which Lambda runs once per container (its init phase): every invocation reuses them.
settings = streaming.Settings.from_env()
model = load_model(settings.model_spec)
writer = None if settings.test_run else streaming.KinesisWriter(settings.predictions_stream)


def lambda_handler(event, context):
    """Predict every ride of a Kinesis batch with one model call and write the predictions.

    Returns {"predictions": [...], "batchItemFailures": [{"itemIdentifier": seq}, ...],
    "rejected": [{"itemIdentifier": seq, "reason": ...}, ...]}; Lambda reads only
    batchItemFailures (ReportBatchItemFailures must be on in the event-source mapping): the
    undelivered predictions' records and, unless MALFORMED_RECORDS=reject, the malformed ones.
    """
    records = event.get("Records", [])
    # A bad record is logged and set aside with its reason; the valid ones go on.
    decoded, rejected = streaming.decode_records(records)
    # One model call for the whole batch: numpy pays its overhead once.
    durations = model.predict([d.ride for d in decoded]) if decoded else []
    predictions = [streaming.prediction_event(d.ride_id, x, model.version) for d, x in zip(decoded, durations)]
    # PutRecords with retries; what Kinesis still refuses goes back to Lambda to retry.
    undelivered = streaming.deliver(writer, decoded, predictions) if writer else []
    return streaming.batch_response(records, predictions, rejected, undelivered, settings.report_malformed)
