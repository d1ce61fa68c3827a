"""The Azure Functions entry points. Each trigger is a few lines that hand over to ``leads``.

Imports stay light here (cold start is a feature): the ``leads`` modules, and the Azure SDKs they
use, are imported inside the functions, on first call.
"""

import azure.functions as func

from leads.core.telemetry import configure_telemetry, reported

# Application Insights only when APPLICATIONINSIGHTS_CONNECTION_STRING is set; masks emails and
# phone numbers in every log line whatever the destination.
configure_telemetry()

app = func.FunctionApp()
# Each function is @reported: a failure is told (a FunctionFailed event, for the alert rule) before the
# host retries it or moves its message to the poison queue, as it did before.


@app.route(route="leads", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@reported
def ingest_lead(req: func.HttpRequest) -> func.HttpResponse:
    from leads.intake.ingest import accept_http

    answer = accept_http(req.get_body())
    return func.HttpResponse(answer.json(), status_code=answer.status, mimetype="application/json")


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@reported
def health(req: func.HttpRequest) -> func.HttpResponse:
    from leads.ops.health import health as app_health

    answer = app_health()
    return func.HttpResponse(answer.json(), status_code=answer.status, mimetype="application/json")


@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@reported
def status(req: func.HttpRequest) -> func.HttpResponse:
    from leads.ops.health import status as app_status

    answer = app_status()
    return func.HttpResponse(answer.json(), status_code=answer.status, mimetype="application/json")


@app.timer_trigger(schedule="%LEADS_POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
@reported
def poll_marketplace_table(timer: func.TimerRequest) -> None:
    from leads.core.deadlines import run_timer
    from leads.core.settings import get_settings
    from leads.intake.poll import poll_marketplace

    run_timer("the poll", get_settings().poll_schedule, poll_marketplace)


@app.queue_trigger(arg_name="message", queue_name="%LEADS_DELIVERY_QUEUE%", connection="AzureWebJobsStorage")
@reported
def deliver_lead(message: func.QueueMessage) -> None:
    from leads.delivery.deliver import handle_message

    handle_message(message.get_body())


@app.timer_trigger(schedule="%LEADS_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False)
@reported
def sweep_deliveries(timer: func.TimerRequest) -> None:
    from leads.core.deadlines import run_timer
    from leads.core.settings import get_settings
    from leads.ops.operations import sweep

    run_timer("the sweep", get_settings().sweep_schedule, sweep)


@app.timer_trigger(schedule="%LEADS_VERIFY_SCHEDULE%", arg_name="timer", run_on_startup=False)
@reported
def maintain_store(timer: func.TimerRequest) -> None:
    from leads.ops.operations import maintain

    maintain()


@app.timer_trigger(schedule="%LEADS_RETENTION_SCHEDULE%", arg_name="timer", run_on_startup=False)
@reported
def erase_expired_leads(timer: func.TimerRequest) -> None:
    from leads.core.deadlines import run_timer
    from leads.core.settings import get_settings
    from leads.store.erasure import apply_retention

    run_timer("the retention run", get_settings().retention_schedule, apply_retention)
