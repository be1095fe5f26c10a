"""AWS Lambda entry point: ride events from Kinesis in, ride-duration predictions out.

Configured by environment variables (see ride_duration.streaming): the model comes from
MODEL_LOCATION, or from RUN_ID + MLFLOW_EXPERIMENT_ID + MODEL_BUCKET; predictions go to
PREDICTIONS_STREAM_NAME [ride_predictions]; malformed records go, with their reasons, to the
SQS queue DEAD_LETTER_QUEUE [ride_events_dead_letter]; TEST_RUN=True writes nothing.

Only numpy and boto3 are imported (no scikit-learn, pandas or MLflow), so the cold start
stays well inside Lambda's defaults: see Performance in the repository's README.
"""

from ride_duration import streaming
from ride_duration.models import load_model

# At import, which Lambda runs once per container (its init phase): every invocation reuses them.
settings = streaming.Settings.from_env()
model = load_model(settings.model_spec)
writer = None if settings.test_run else streaming.KinesisWriter(settings.predictions_stream)
dead_letters = None if settings.test_run else streaming.DeadLetterQueue(settings.dead_letter_queue)


def lambda_handler(event, context):
    """Predict every ride of a Kinesis batch with one model call and write the predictions.

    Returns {"predictions": [...], "batchItemFailures": [{"itemIdentifier": seq}, ...],
    "rejected": [{"itemIdentifier": seq, "reason": ...}, ...], "written": n, "dead_lettered": n};
    Lambda reads only batchItemFailures (ReportBatchItemFailures must be on in the event-source
    mapping): the records whose predictions could not be delivered, which Lambda retries.
    """
    return handle(event, model, writer, dead_letters)


def handle(event, model, writer, dead_letters):
    """The handler's steps, with the model, writer and dead-letter queue given (None: write nothing)."""
    records = event.get("Records", [])
    # A bad record is set aside with its reason; the valid ones go on.
    decoded, rejected = streaming.decode_records(records)
    # One model call for the whole batch: numpy pays its overhead once.
    durations = model.predict([d.ride for d in decoded]) if decoded else []
    predictions = [streaming.prediction_event(d.ride_id, x, model.version) for d, x in zip(decoded, durations)]
    # PutRecords with retries; what Kinesis still refuses goes back to Lambda to retry.
    delivered = streaming.deliver(writer, decoded, predictions)
    # A malformed record can never succeed: it goes to the dead-letter queue, not back to Lambda.
    dead_lettered = streaming.dead_letter(dead_letters, rejected)
    return streaming.batch_response(records, predictions, rejected, delivered, dead_lettered)
