"""Every setting the app reads, with its default, in one place.

Settings are app settings in Azure and environment variables locally (``serve`` loads
``local.settings.json`` into the environment first, as Core Tools does). The names are part of
the outside contract: keep them stable and keep README.md and local.settings.sample.json in step.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    poll_overlap_minutes: float = Field(
        10.0,
        alias="LEADS_POLL_OVERLAP_MINUTES",
        ge=0,
        description="How far behind its watermark the poll reads again, for rows whose "
        "server-set Timestamp lands out of order.",
    )
    dedupe_window_hours: float = Field(
        24.0,
        alias="LEADS_DEDUPE_WINDOW_HOURS",
        ge=0,
        description="The same HTTP lead arriving again within this window is a duplicate.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings()
