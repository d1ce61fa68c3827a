"""What a command tells its user when it cannot do its work, fitted to where the app runs.

A run on this machine (``make run``: Azurite on loopback ports that ``local.settings.json`` names)
and the app in Azure fail differently and are mended differently: storage that does not answer
locally means the emulator is not running (the fix is ``make run``), in Azure it means the
``AzureWebJobsStorage`` settings or the identity's roles. Advice that holds only in Azure (function
keys, "reachable from Azure") is not given to a local run. A setting whose value the settings
model refuses is named with what is wrong with it, never shown as a pydantic traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

    from leads.core.settings import Settings

LOCAL_STORAGE_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# A refused value of a setting named like these is not quoted back: it may be, or hold, a secret.
_SECRET_WORDS = ("SECRET", "TOKEN", "KEY", "CONNECTION", "PASSWORD")
SETTINGS_FIX = (
    "correct it where it is set (local.settings.json's Values, the environment, or the app settings "
    "in Azure); docs/settings.md lists every setting and its values"
)


def is_local_emulator(connection: str) -> bool:
    """Whether a storage connection string names an emulator on this machine."""
    return "UseDevelopmentStorage=true" in connection or any(f"//{host}:" in connection for host in LOCAL_STORAGE_HOSTS)


def runs_locally(settings: Settings) -> bool:
    """Whether these are a local run's settings: the app's storage is an emulator on this machine."""
    return is_local_emulator(settings.storage_connection)


def storage_fix(settings: Settings) -> str:
    if runs_locally(settings):
        return (
            "start the storage emulator and the app with `make run` (in another terminal; it points "
            "local.settings.json at its Azurite), then run this again"
        )
    return (
        "check AzureWebJobsStorage: a connection string, or AzureWebJobsStorage__accountName with a Storage "
        "Table and Queue Data role for your sign-in (az login) or the app's identity"
    )


def storage_failure(error: BaseException) -> str:
    """Why storage could not be used, in a line: what did not answer and how, never the
    exception's own text (it may quote a URL with its signature)."""
    from azure.core.exceptions import ClientAuthenticationError

    from leads.core.storage import StorageNotConfigured
    from leads.destinations.base import classify_error

    if isinstance(error, StorageNotConfigured):
        return str(error)
    if isinstance(error, ClientAuthenticationError) and getattr(error, "status_code", None) is None:
        return "no Azure sign-in was found to reach it with (az login)"
    return str(classify_error(error))  # type: ignore[arg-type]


def storage_message(command: str, error: BaseException, settings: Settings) -> str:
    """What ``command`` tried, why it failed and what to do: a few lines for the terminal."""
    from leads.core.local_settings import where_set

    which = "the local storage emulator" if runs_locally(settings) else "the storage"
    return (
        f"{command}: {which} that AzureWebJobsStorage names ({where_set('AzureWebJobsStorage')}) could not be "
        f"used: {storage_failure(error)}.\n"
        f"  To do: {storage_fix(settings)}."
    )


def setting_problems(error: ValidationError) -> list[tuple[str, str]]:
    """(setting, what is wrong with its value) for each value the settings model refused."""
    from leads.core.local_settings import where_set
    from leads.core.settings import Settings, range_text
    from leads.destinations.notice import within

    fields = {field.alias or name: field for name, field in Settings.model_fields.items()}
    problems = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        name = _refused_setting(item, message, set(fields))
        value = item.get("input")
        quoted = isinstance(value, str) and not any(word in name.upper() for word in _SECRET_WORDS)
        if not message.startswith(name):
            message = f"{name} is {within(value, 60)!r}: {message}" if quoted else f"{name}: {message}"
            # A number that did not parse: say what it must be, as a number out of range is told.
            if name in fields and (must := range_text(fields[name], fields[name].annotation is int)):
                message += f"; it must be {must}"
        problems.append((name, f"{message} ({where_set(name)})"))
    return problems


def _refused_setting(item: ErrorDetails, message: str, aliases: set[str]) -> str:
    """The setting one error of the settings model is about: its field's, or for a check of several
    settings together (the send's order, Settings._each_send_ends_inside_its_claim) the one its
    message starts with."""
    if item["loc"]:
        return ".".join(str(part) for part in item["loc"])
    first = message.split(" ", 1)[0]
    return first if first in aliases else "settings"


def settings_despite(error: ValidationError) -> Settings:
    """The settings with each refused value at its default, so that ``check`` can go on with the
    rest. Raises ValidationError again when the rest cannot stand without them."""
    from leads.core.settings import Settings

    refused = {name for name, _ in setting_problems(error)}
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
        if (field.alias or name) in refused or name in refused
    }
    return Settings(**defaults)
