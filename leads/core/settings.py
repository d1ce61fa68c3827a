"""Every setting the app reads, with its default, in one place.

Settings are app settings in Azure and environment variables locally (``serve`` loads
``local.settings.json`` into the environment first, as Core Tools does). The names are part of
the outside contract: keep them stable and keep docs/settings.md (a destination's: its docs
page) and local.settings.sample.json in step (tests/test_settings.py).
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The longest a whole send (token, look-up, write) may take (leads/delivery/deliver.py), and the
# longest one call to a destination may (LEADS_HTTP_TIMEOUT_SECONDS): half of it, so a send has room
# for more than one call. How they stand to the claim of a delivery is checked once, in
# Settings._each_send_ends_inside_its_claim.
SEND_DEADLINE_SECONDS = 120.0
MAX_CALL_SECONDS = SEND_DEADLINE_SECONDS / 2
DEFAULT_CHANNEL = "default"  # the channel of TEAMS_WEBHOOK_URL / SLACK_WEBHOOK_URL
MAPPING = "Field mapping: the {crm} fields a lead fills beyond the built-in ones (JSON, or a JSON file's path)."


def number(
    default: Any, alias: str, low: float, high: float, unit: str, description: str = "", *, above: bool = False
) -> Any:
    """A numeric setting: finite and from ``low`` (excluded, with ``above``) to ``high``. A value
    out of range, ``inf`` or ``nan`` is refused when the settings are read, naming the setting and
    its range: a timedelta built from ``inf`` later would crash every call that uses it."""
    return Field(
        default,
        alias=alias,
        description=description,
        json_schema_extra={"range": {"low": low, "high": high, "unit": unit, "above": above}},
    )


def range_text(field: Any, integer: bool = False) -> str:
    """What a numeric setting must be, in words: "a number from 0 to 1440 (minutes)"."""
    bounds = (field.json_schema_extra or {}).get("range")
    if not bounds:
        return ""
    kind = "a whole number" if integer else "a number"
    low, high = (f"{x:,.0f}" if float(x).is_integer() else f"{x:g}" for x in (bounds["low"], bounds["high"]))
    return f"{kind} {f'above {low} and at most' if bounds['above'] else f'from {low} to'} {high} ({bounds['unit']})"


class Settings(BaseSettings):
    """The app's settings. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True)

    storage_connection: str = Field(
        "",
        alias="AzureWebJobsStorage",
        description="The app's own storage: leads, checkpoints, queues. A connection string, or "
        "empty with AzureWebJobsStorage__tableServiceUri/__queueServiceUri for managed identity.",
    )
    table_prefix: str = Field(
        "Leads",
        alias="LEADS_TABLE_PREFIX",
        pattern=r"^[A-Za-z][A-Za-z0-9]{2,40}$",
        description="Names the app's own tables (Leads, LeadsCheckpoints, ...) and queues.",
    )
    marketplace_table_connection: str = Field(
        "",
        alias="MARKETPLACE_TABLE_CONNECTION",
        description="Connection string of the account the marketplace writes its table into; "
        "empty means the app's own storage.",
    )
    marketplace_table_name: str = Field("MarketplaceLeads", alias="MARKETPLACE_TABLE_NAME")
    poll_schedule: str = Field(
        "*/30 * * * * *",
        alias="LEADS_POLL_SCHEDULE",
        description="NCRONTAB (six fields, seconds first) of the marketplace table poll.",
    )
    poll_overlap_minutes: float = number(
        10.0,
        "LEADS_POLL_OVERLAP_MINUTES",
        0,
        1440,
        "minutes",
        description="How far behind its watermark the poll reads again, for rows whose "
        "server-set Timestamp lands out of order.",
    )
    poll_full_scan_minutes: float = number(
        60.0,
        "LEADS_POLL_FULL_SCAN_MINUTES",
        0,
        10080,
        "minutes",
        description="How often the poll reads the whole marketplace table (by Timestamp, from the "
        "previous such scan on) to take in any row its reading by day partitions missed.",
    )
    backfill_days: float = number(
        7.0,
        "LEADS_BACKFILL_DAYS",
        0,
        3650,
        "days",
        above=True,
        description="Leads older than this when taken in (the first poll of a table with history) are "
        "stored with their deliveries skipped; `replay` delivers them.",
    )
    dedupe_window_hours: float = number(
        24.0,
        "LEADS_DEDUPE_WINDOW_HOURS",
        0,
        8760,
        "hours",
        description="The same HTTP lead arriving again within this window is a duplicate.",
    )

    id_key: str = Field(
        "",
        alias="LEADS_ID_KEY",
        description="The secret every digest made of personal data is keyed with (HMAC-SHA-256): HTTP and import "
        "lead ids, identity, email-index, content and tombstone rows. At least 32 random characters; never change it. "
        "Azure: a Key Vault secret the template creates once; `make run` generates one into local.settings.json.",
    )

    retention_days: float | None = number(
        None,
        "LEADS_RETENTION_DAYS",
        0,
        36500,
        "days",
        above=True,
        description="Erase the personal data of leads received more than this many days ago (daily, "
        "LEADS_RETENTION_SCHEDULE). Unset: keep everything.",
    )
    retention_schedule: str = Field(
        "0 30 3 * * *",
        alias="LEADS_RETENTION_SCHEDULE",
        description="NCRONTAB of the retention run (daily at 03:30 UTC by default).",
    )

    @field_validator("retention_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty app setting (the sample's, a template's) means "keep everything".
        return None if isinstance(value, str) and not value.strip() else value

    # --- delivery ---------------------------------------------------------------------------
    delivery_queue: str = Field(
        "leads-deliveries",
        alias="LEADS_DELIVERY_QUEUE",
        pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
        description="The Storage queue of deliveries, one message per (lead, destination).",
    )
    sweep_schedule: str = Field(
        "0 */2 * * * *",
        alias="LEADS_SWEEP_SCHEDULE",
        description="NCRONTAB of the sweep that re-enqueues deliveries whose message was lost.",
    )
    verify_schedule: str = Field(
        "0 */15 * * * *",
        alias="LEADS_VERIFY_SCHEDULE",
        description="NCRONTAB of the maintenance run that verifies and repairs the recent days' derived rows.",
    )
    verify_days: int = number(
        2,
        "LEADS_VERIFY_DAYS",
        1,
        31,
        "days",
        description="How many recent days of leads (today included) each maintenance run verifies.",
    )
    routing: str = Field("", alias="LEADS_ROUTING", description="Routing rules: JSON, or a JSON file's path.")
    test_leads: Literal["notify", "deliver", "drop"] = Field(
        "notify",
        alias="LEADS_TEST_LEADS",
        description="Test leads: notify (email only, marked [TEST]), deliver (everywhere), drop.",
    )
    retry_hours: float = number(
        24.0,
        "LEADS_RETRY_HOURS",
        12,
        720,
        "hours",
        description="How long transient failures are retried before a delivery is failed.",
    )
    retry_base_seconds: float = number(
        30.0,
        "LEADS_RETRY_BASE_SECONDS",
        0,
        3600,
        "seconds",
        above=True,
        description="The first retry's delay; each next one doubles (with jitter), up to an hour.",
    )
    http_timeout_seconds: float = number(
        30.0,
        "LEADS_HTTP_TIMEOUT_SECONDS",
        0,
        MAX_CALL_SECONDS,
        "seconds",
        above=True,
        description="How long one call to a destination may take, connect to last byte (at most 60).",
    )
    claim_minutes: float = number(
        5.0,
        "LEADS_CLAIM_MINUTES",
        SEND_DEADLINE_SECONDS / 60,
        60,
        "minutes",
        above=True,
        description="How long a worker holds a delivery it sends: a worker that dies mid-send frees it after "
        f"this. Longer than a send may take ({SEND_DEADLINE_SECONDS / 60:g} minutes).",
    )
    alert_to: str = Field(
        "", alias="LEADS_ALERT_TO", description="Who is emailed when deliveries fail or leads stop arriving."
    )
    silence_days: int = number(
        3,
        "LEADS_SILENCE_DAYS",
        1,
        365,
        "days",
        "The fewest days without a lead (of an offer, or of all) before the silence alarm; an offer whose "
        "leads come further apart is given longer (twice its usual gap).",
    )
    function_app_id: str = Field(
        "",
        alias="LEADS_FUNCTION_APP_ID",
        description="The function app's Azure resource id, for `check` to list the names of its function keys "
        "with the caller's Azure sign-in. Operators' machines only.",
    )

    # --- email (Azure Communication Services) -----------------------------------------------
    email_to: str = Field("", alias="EMAIL_TO", description="Sales recipients, separated by ';'.")
    email_connection_string: str = Field("", alias="EMAIL_CONNECTION_STRING")
    email_endpoint: str = Field("", alias="EMAIL_ENDPOINT", description="ACS endpoint, used with managed identity.")
    email_sender: str = Field("", alias="EMAIL_SENDER", description="The verified sender address.")
    email_pii: Literal["full", "masked", "none"] = Field("full", alias="EMAIL_PII")
    email_outbox_dir: str = Field(
        ".outbox", alias="EMAIL_OUTBOX_DIR", description="Where mails go as .eml files when ACS is not set."
    )
    email_per_minute: int = number(
        30,
        "EMAIL_PER_MINUTE",
        1,
        100_000,
        "mails a minute",
        "ACS's sending limit a minute: 30 (custom domain, by default) or 5 (Azure-managed domain).",
    )
    email_per_hour: int = number(
        100,
        "EMAIL_PER_HOUR",
        1,
        1_000_000,
        "mails an hour",
        "ACS's sending limit an hour: 100 (custom domain, by default) or 10 (Azure-managed domain).",
    )
    leads_portal_url: str = Field(
        "", alias="LEADS_PORTAL_URL", description="Where sales finds leads, named in mails without personal data."
    )

    # --- webhook ------------------------------------------------------------------------------
    webhook_url: str = Field("", alias="WEBHOOK_URL")
    webhook_secret: str = Field("", alias="WEBHOOK_SECRET")

    # --- Teams and Slack channels -----------------------------------------------------------------
    # Webhook URLs carry their secret, so they live here (Key Vault references in Azure), never in
    # the routing document: a routing rule names a channel, and these settings hold its URL.
    teams_webhook_url: str = Field(
        "", alias="TEAMS_WEBHOOK_URL", description="The default Teams channel: a Workflows webhook URL."
    )
    teams_channels: str = Field(
        "", alias="TEAMS_CHANNELS", description='Named Teams channels: {"sales-emea": "<webhook URL>", ...}.'
    )
    slack_webhook_url: str = Field(
        "", alias="SLACK_WEBHOOK_URL", description="The default Slack channel: an incoming webhook URL."
    )
    slack_channels: str = Field(
        "", alias="SLACK_CHANNELS", description='Named Slack channels: {"sales-emea": "<webhook URL>", ...}.'
    )

    def channel_webhook(self, destination: str, channel: str = DEFAULT_CHANNEL) -> str:
        """The webhook URL of one ``teams`` or ``slack`` channel ("" when it has none): the
        default channel's from ``TEAMS_WEBHOOK_URL``, a named one's from ``TEAMS_CHANNELS``."""
        if channel == DEFAULT_CHANNEL:
            return getattr(self, f"{destination}_webhook_url").strip()
        try:
            return str(self.named_channels(destination).get(channel) or "").strip()
        except ValueError:
            return ""

    def named_channels(self, destination: str) -> dict[str, str]:
        """``TEAMS_CHANNELS`` (or ``SLACK_CHANNELS``) read: channel name → URL. Raises
        ValueError naming the setting when it is not a JSON object of text."""
        text = getattr(self, f"{destination}_channels").strip()
        if not text:
            return {}
        name = f"{destination.upper()}_CHANNELS"
        try:
            channels = json.loads(text)
        except ValueError:
            raise ValueError(f'{name} is not JSON: expected {{"channel-name": "https://...", ...}}') from None
        if not isinstance(channels, dict) or not all(isinstance(url, str) for url in channels.values()):
            raise ValueError(f'{name} must be a JSON object of channel names and URLs: {{"sales-emea": "https://..."}}')
        return {str(key).strip().lower(): url for key, url in channels.items()}

    # --- Dynamics 365 (Dataverse Web API) ------------------------------------------------------
    dynamics_url: str = Field("", alias="DYNAMICS_URL", description="e.g. https://contoso.crm4.dynamics.com")
    dynamics_tenant_id: str = Field("", alias="DYNAMICS_TENANT_ID")
    dynamics_client_id: str = Field(
        "", alias="DYNAMICS_CLIENT_ID", description="The app's managed identity's client ID, or an app registration's."
    )
    dynamics_client_secret: str = Field(
        "", alias="DYNAMICS_CLIENT_SECRET", description="An app registration's secret; empty: the managed identity."
    )
    dynamics_authority: str = Field(
        "https://login.microsoftonline.com",
        alias="DYNAMICS_AUTHORITY",
        description="Entra login host (sovereign clouds).",
    )
    dynamics_mapping: str = Field("", alias="DYNAMICS_MAPPING", description=MAPPING.format(crm="lead row's"))

    # --- Salesforce -----------------------------------------------------------------------------
    salesforce_oid: str = Field("", alias="SALESFORCE_OID", description="Web-to-Lead organisation id.")
    salesforce_web_to_lead_url: str = Field(
        "https://webto.salesforce.com/servlet/servlet.WebToLead?encoding=UTF-8", alias="SALESFORCE_WEB_TO_LEAD_URL"
    )
    salesforce_url: str = Field("", alias="SALESFORCE_URL", description="My Domain URL, for the REST API.")
    salesforce_client_id: str = Field("", alias="SALESFORCE_CLIENT_ID")
    salesforce_client_secret: str = Field("", alias="SALESFORCE_CLIENT_SECRET")
    salesforce_external_id_field: str = Field("", alias="SALESFORCE_EXTERNAL_ID_FIELD")
    salesforce_mapping: str = Field("", alias="SALESFORCE_MAPPING", description=MAPPING.format(crm="Lead's"))

    # --- Marketo --------------------------------------------------------------------------------
    marketo_url: str = Field("", alias="MARKETO_URL", description="REST base, https://<munchkin>.mktorest.com")
    marketo_client_id: str = Field("", alias="MARKETO_CLIENT_ID")
    marketo_client_secret: str = Field("", alias="MARKETO_CLIENT_SECRET")
    marketo_form_id: str = Field("", alias="MARKETO_FORM_ID")
    marketo_mapping: str = Field("", alias="MARKETO_MAPPING", description=MAPPING.format(crm="person's"))

    # --- HubSpot --------------------------------------------------------------------------------
    hubspot_token: str = Field("", alias="HUBSPOT_TOKEN", description="Service Key (or a private app's token).")
    hubspot_url: str = Field("https://api.hubapi.com", alias="HUBSPOT_URL")
    hubspot_mapping: str = Field("", alias="HUBSPOT_MAPPING", description=MAPPING.format(crm="contact's"))

    @property
    def claim(self) -> timedelta:
        """How long a claim holds a delivery (``LEADS_CLAIM_MINUTES``)."""
        return timedelta(minutes=self.claim_minutes)

    @model_validator(mode="after")
    def _each_send_ends_inside_its_claim(self) -> Settings:
        # One call ends by its timeout, a send of several calls by the send deadline, and both well
        # before the claim runs out: otherwise another worker may take a delivery under a live send.
        call, send, claim = self.http_timeout_seconds, SEND_DEADLINE_SECONDS, self.claim.total_seconds()
        if call >= send:
            raise ValueError(
                f"LEADS_HTTP_TIMEOUT_SECONDS is {call:g}, not shorter than a send's deadline ({send:g} s): a call "
                f"must end before its send does; set it below {send:g} (seconds)"
            )
        if send >= claim:
            raise ValueError(
                f"LEADS_CLAIM_MINUTES is {self.claim_minutes:g} ({claim:g} s), not longer than a send may take "
                f"({send:g} s, each call up to LEADS_HTTP_TIMEOUT_SECONDS, {call:g} s): another worker could take "
                f"a delivery under a live send; set it above {send / 60:g} (minutes)"
            )
        return self

    @field_validator("*")
    @classmethod
    def _finite_and_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name]
        bounds = (field.json_schema_extra or {}).get("range") if isinstance(field.json_schema_extra, dict) else None
        if bounds is None or value is None:
            return value
        low_ok = value > bounds["low"] if bounds["above"] else value >= bounds["low"]
        if not (math.isfinite(value) and low_ok and value <= bounds["high"]):
            raise ValueError(f"{field.alias} is {value:g}: it must be {range_text(field, isinstance(value, int))}")
        return value


def json_setting(name: str, text: str, error: type[ValueError]) -> tuple[object, str]:
    """``(document, where)`` of a setting that holds JSON or the path of a JSON file (``LEADS_ROUTING``,
    ``SALESFORCE_MAPPING``, ...); ``where`` names the setting or the file. Raises ``error`` saying why."""
    text, where = text.strip(), name
    if text[:1] not in ("{", "["):
        path = Path(text)
        if not path.is_file():
            # A relative path is read from the working directory: say which file that was.
            raise error(f"{name} names {text}, which is not a file (or is not JSON); looked for {path.absolute()}")
        text, where = path.read_text(encoding="utf-8"), str(path)
    try:
        return json.loads(text), where
    except ValueError as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once from the environment. A value the model refuses (a
    numeric setting out of its range among them) raises pydantic's ValidationError naming it, where
    the app starts: ``serve`` and every command say it in a few lines (leads/ops/advice.py), ``check`` as
    a problem line, and each function of the deployed app fails its first call with it."""
    return Settings()
