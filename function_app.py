"""The Azure Functions entry points. Each trigger is a few lines that hand over to ``leads``.

Imports stay light here (cold start is a feature): the ``leads`` modules, and the Azure SDKs they
use, are imported inside the functions, on first call.
"""

import azure.functions as func

app = func.FunctionApp()


@app.route(route="leads", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def ingest_lead(req: func.HttpRequest) -> func.HttpResponse:
    from leads.intake import accept_http

    answer = accept_http(req.get_body())
    return func.HttpResponse(answer.json(), status_code=answer.status, mimetype="application/json")


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from leads.intake import health as check_health

    answer = check_health()
    return func.HttpResponse(answer.json(), status_code=answer.status, mimetype="application/json")


@app.timer_trigger(schedule="%LEADS_POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
def poll_marketplace_table(timer: func.TimerRequest) -> None:
    from leads.poll import poll_marketplace

    poll_marketplace()
