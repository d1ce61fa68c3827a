"""The deployment templates (infra/, azure.yaml, host.json) agree with the code and keep their
security properties.

The Bicep CLI is not available here, so the templates are parsed with pycep-parser and asserted on
as data. The settings test reads the settings model (leads.core.settings.Settings) itself, so a setting
added to the code without a template parameter fails here instead of in Azure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import typing
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pycep = pytest.importorskip("pycep", reason="pycep-parser is in requirements-infra.txt")
yaml = pytest.importorskip("yaml", reason="pyyaml is in requirements-infra.txt")

from leads.core.settings import Settings  # noqa: E402

from .test_registry import declared_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Settings that later issues add to leads/core/settings.py. The template already takes them (as
# optional parameters) so that code and infrastructure do not drift; once a field with the alias
# exists in the model it is checked from there as well. Keep this the only list of them.
PLANNED_SETTINGS = {
    "LEADS_ROUTING",
    "LEADS_TEST_LEADS",
    "LEADS_ALERT_TO",
    "LEADS_RETENTION_DAYS",
    "EMAIL_TO",
    "EMAIL_PII",
    "EMAIL_SENDER",
    "EMAIL_ENDPOINT",
    "WEBHOOK_URL",
    "WEBHOOK_SECRET",
    "DYNAMICS_URL",
    "DYNAMICS_TENANT_ID",
    "DYNAMICS_CLIENT_ID",
    "DYNAMICS_CLIENT_SECRET",
    "SALESFORCE_OID",
    "SALESFORCE_URL",
    "SALESFORCE_CLIENT_ID",
    "SALESFORCE_CLIENT_SECRET",
    "SALESFORCE_EXTERNAL_ID_FIELD",
    "MARKETO_URL",
    "MARKETO_CLIENT_ID",
    "MARKETO_CLIENT_SECRET",
    "MARKETO_FORM_ID",
    "HUBSPOT_TOKEN",
}

# Settings the template deliberately leaves to the code's default, with the reason. A setting
# may only be here if the model gives it a default, and never if a binding expression uses it.
LEFT_TO_CODE_DEFAULT: dict[str, str] = {
    "EMAIL_CONNECTION_STRING": "ACS is reached with the managed identity (EMAIL_ENDPOINT), not its key",
    "EMAIL_OUTBOX_DIR": "local runs only: in Azure EMAIL_ENDPOINT is always set, so mail never goes to the outbox",
    "LEADS_RETRY_HOURS": "a tunable with a safe default (24 h of retries); set it by hand if ever needed",
    "LEADS_RETRY_BASE_SECONDS": "a tunable with a safe default (30 s, doubling)",
    "LEADS_HTTP_TIMEOUT_SECONDS": "a tunable with a safe default (30 s)",
    "DYNAMICS_AUTHORITY": "the public-cloud Entra host; only sovereign clouds and tests change it",
    "SALESFORCE_WEB_TO_LEAD_URL": "Salesforce's public Web-to-Lead endpoint; only tests change it",
    "HUBSPOT_URL": "HubSpot's public API; only tests change it",
    "LEADS_FUNCTION_APP_ID": (
        "operators' machines only: check lists key names with their az login; the app may not list its own keys"
    ),
}

# Connection settings the template provides in their identity-based form (<name>__...).
IDENTITY_CONNECTIONS = {"AzureWebJobsStorage"}

# Secrets: their app settings must be Key Vault references. The destinations' are what their
# classes declare (secret_fields), but for those the template leaves to the code's default.
SECRET_SETTINGS = {"MARKETPLACE_TABLE_CONNECTION", "LEADS_ID_KEY"} | {
    alias for _, secrets in declared_settings().values() for alias in secrets if alias not in LEFT_TO_CODE_DEFAULT
}

# Settings the platform reads (host storage over the identity, Application Insights).
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}

# App settings a Flex Consumption app rejects (functionAppConfig replaces them).
FLEX_REJECTED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_DNS_SERVER",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_VNET_ROUTE_ALL",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "DEPLOYMENT_STORAGE_CONNECTION_STRING",
}

# The only GUIDs a template may contain: built-in role definitions, least privilege for each use.
ROLE_IDS = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "09976791-48a7-449e-bb21-39d1a415f350": "Communication and Email Service Owner",
}
APP_ROLES = {
    "Storage Blob Data Owner",
    "Storage Queue Data Contributor",
    "Storage Table Data Contributor",
    "Key Vault Secrets User",
    "Monitoring Metrics Publisher",
    "Communication and Email Service Owner",
}

GUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
AZD_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<default>[^}]*))?\}")


# --- reading the templates -----------------------------------------------------------------------


@cache
def _parser():
    return pycep.BicepParser()


@cache
def parsed(path: Path) -> dict[str, Any]:
    return _parser().parse(file_path=path)


def bicep(relative: str) -> dict[str, Any]:
    return parsed(INFRA / relative)


def resources_of(template: dict, type_: str) -> dict[str, dict]:
    return {name: r for name, r in template.get("resources", {}).items() if r["type"] == type_ and not r["existing"]}


def body(resource: dict) -> dict:
    """A resource's or module's properties, whether or not it is conditional (`= if (...) {`)."""
    config = resource["config"]
    return config["config"] if set(config) == {"condition", "config"} else config


def condition(resource: dict) -> Any:
    config = resource["config"]
    return config["condition"] if set(config) == {"condition", "config"} else None


def the_resource(relative: str, type_: str) -> dict:
    (resource,) = resources_of(bicep(relative), type_).values()
    return body(resource)


def param_default(template: dict, name: str) -> Any:
    return template["parameters"][name].get("default")


def is_secure(param: dict) -> bool:
    return any(d.get("type") == "secure" for d in param.get("decorators", []))


def object_keys(node: Any, template: dict, bound: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keys (with their value expressions) of the object(s) an expression can produce: literal
    objects, and the objects behind variables, bound parameters, union() and ?: branches."""
    bound = bound or {}
    found: dict[str, Any] = {}
    if isinstance(node, str):
        if node in bound:
            found.update(object_keys(bound[node], template))
        elif node in template.get("variables", {}):
            found.update(object_keys(template["variables"][node]["value"], template, bound))
    elif isinstance(node, dict):
        if set(node) == {"function"}:
            arguments = node["function"].get("parameters") or {}
            for argument in arguments.values() if isinstance(arguments, dict) else arguments:
                found.update(object_keys(argument, template, bound))
        elif set(node) == {"operator"}:
            for operand in node["operator"]["operands"].values():
                found.update(object_keys(operand, template, bound))
        else:
            found.update({key.strip("'"): value for key, value in node.items()})
    return found


@cache
def app_settings() -> dict[str, Any]:
    """Every app setting the templates can give the function app, name -> value expression."""
    main = bicep("main.bicep")
    api_call = body(main["modules"]["api"])["params"]
    api = bicep("app/api.bicep")
    (config,) = [
        body(r) for r in resources_of(api, "Microsoft.Web/sites/config").values() if body(r)["name"] == "appsettings"
    ]
    # appSettings inside api.bicep is the object main.bicep passes in.
    passed = object_keys(api_call["appSettings"], main)
    own = object_keys(config["properties"], api, bound={"appSettings": {}})
    return {**passed, **own}


def azd_parameters() -> dict[str, Any]:
    """main.parameters.json as azd sees it with an empty environment: ${VAR=default} -> default."""
    text = (INFRA / "main.parameters.json").read_text()
    return json.loads(AZD_VAR.sub(lambda m: m.group("default") or "", text))["parameters"]


def model_aliases() -> dict[str, Any]:
    return {field.alias or name: field for name, field in Settings.model_fields.items()}


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_template_parses(path):
    template = parsed(path)
    assert template.get("resources") or template.get("modules"), f"{path} declares nothing"


def test_every_module_path_exists():
    for path in BICEP_FILES:
        for module in parsed(path).get("modules", {}).values():
            assert module["type"] == "local", "registry modules cannot be checked here"
            assert (path.parent / module["detail"]["path"]).is_file(), module["detail"]["path"]


# --- settings: code and template agree ----------------------------------------------------------


def test_every_setting_the_code_reads_is_provided_or_defaulted():
    keys = set(app_settings())
    fields = model_aliases()
    missing = []
    for alias in sorted(set(fields) | PLANNED_SETTINGS):
        if alias in keys:
            continue
        if (
            alias in IDENTITY_CONNECTIONS
            and {f"{alias}__credential", f"{alias}__clientId"} <= keys
            and ({f"{alias}__tableServiceUri", f"{alias}__queueServiceUri"} <= keys or f"{alias}__accountName" in keys)
        ):
            continue
        if alias in LEFT_TO_CODE_DEFAULT and alias in fields and not fields[alias].is_required():
            continue  # the model's default applies (reason in LEFT_TO_CODE_DEFAULT)
        missing.append(alias)
    assert not missing, f"settings the code reads that the template neither sets nor leaves to a default: {missing}"


def test_left_to_code_default_is_current():
    fields = model_aliases()
    stale = [alias for alias in LEFT_TO_CODE_DEFAULT if alias not in fields or alias in app_settings()]
    assert not stale, f"LEFT_TO_CODE_DEFAULT entries the model no longer has or the template now sets: {stale}"


def test_the_template_sets_nothing_the_code_does_not_read():
    unknown = set(app_settings()) - set(model_aliases()) - PLANNED_SETTINGS - PLATFORM_SETTINGS
    assert not unknown, f"app settings nobody reads (a typo?): {sorted(unknown)}"


def test_no_setting_that_flex_consumption_rejects():
    keys = set(app_settings())
    assert not keys & FLEX_REJECTED_SETTINGS
    assert "AzureWebJobsStorage" not in keys, "host storage is identity-based: no connection string"
    assert app_settings()["AzureWebJobsStorage__credential"] == "managedidentity"


def test_binding_expressions_are_always_set():
    """A trigger's %NAME% (the poll's schedule, the delivery queue...) fails to bind when the app
    setting is missing, whatever the code's default: the template must always write it."""
    names = set(re.findall(r"%(\w+)%", (ROOT / "function_app.py").read_text()))
    assert "LEADS_POLL_SCHEDULE" in names
    main = bicep("main.bicep")
    core = main["variables"]["coreSettings"]["value"]  # written unconditionally
    for name in names:
        assert name in core, f"%{name}% is not always set by the template"
        assert name not in LEFT_TO_CODE_DEFAULT
        if isinstance(core[name], str) and core[name] in main["parameters"]:
            assert param_default(main, core[name]), f"{name} needs a non-empty default"


def test_choices_match_the_model():
    """A setting with a fixed set of values (Literal in the model) has the same @allowed list."""
    main = bicep("main.bicep")
    fields = model_aliases()
    params_by_setting = {
        alias: expression
        for alias, expression in app_settings().items()
        if isinstance(expression, str) and expression in main["parameters"]
    }
    checked = 0
    for alias, param in params_by_setting.items():
        choices = typing.get_args(fields[alias].annotation) if alias in fields else ()
        if choices and typing.get_origin(fields[alias].annotation) is typing.Literal:
            allowed = [d["argument"] for d in main["parameters"][param]["decorators"] if d["type"] == "allowed"]
            assert allowed and set(allowed[0]) == set(choices), alias
            checked += 1
    assert checked >= 2


def test_template_defaults_match_the_code_defaults():
    main = bicep("main.bicep")
    fields = model_aliases()
    core = main["variables"]["coreSettings"]["value"]
    compared = 0
    for alias, expression in core.items():
        if alias in fields and isinstance(expression, str) and expression in main["parameters"]:
            template_default, code_default = param_default(main, expression), fields[alias].default
            if isinstance(code_default, int | float) and not isinstance(code_default, bool):
                assert float(template_default) == float(code_default), alias
            else:
                assert template_default == code_default, alias
            compared += 1
    assert compared >= 5


def test_each_destinations_settings_are_set_by_the_template_or_left_to_the_code():
    keys = set(app_settings())
    for name, (aliases, _) in declared_settings().items():
        missing = sorted(aliases - keys - set(LEFT_TO_CODE_DEFAULT))
        assert not missing, f"{name}: settings the template neither sets nor leaves to the code's default: {missing}"


def test_the_template_references_from_key_vault_exactly_the_secrets():
    """Both ways: a declared secret given as a plain value, or a setting read from Key Vault that
    nothing declares a secret, fails by name."""
    prefix = bicep("main.bicep")["variables"]["secretRef"]["value"]
    referenced = {
        alias for alias, value in app_settings().items() if isinstance(value, str) and value.startswith("${secretRef}")
    }
    assert prefix.startswith("@Microsoft.KeyVault(")
    drift = {
        "from Key Vault, no secret declared": referenced - SECRET_SETTINGS,
        "secret, plain": SECRET_SETTINGS - referenced,
    }
    assert referenced == SECRET_SETTINGS, drift


def test_secrets_are_key_vault_references():
    main = bicep("main.bicep")
    prefix = main["variables"]["secretRef"]["value"]
    assert prefix.startswith("@Microsoft.KeyVault(SecretUri=") and prefix.endswith("secrets/")
    settings = app_settings()
    for name in SECRET_SETTINGS:
        value = settings[name]
        assert isinstance(value, str) and value.startswith("${secretRef}") and value.endswith(")"), name


def test_parameters_file_matches_the_template():
    main = bicep("main.bicep")
    given = azd_parameters()
    assert set(given) <= set(main["parameters"]), set(given) - set(main["parameters"])
    for name, param in main["parameters"].items():
        if param.get("default") is None:
            assert name in given, f"{name} has no default: azd must supply it"
    for name, entry in given.items():
        default = param_default(main, name)
        if default is not None:
            assert entry["value"] == default, f"{name}: main.parameters.json and main.bicep defaults differ"


def test_secure_parameters_come_only_from_the_environment():
    text = (INFRA / "main.parameters.json").read_text()
    main = bicep("main.bicep")
    secure = [name for name, param in main["parameters"].items() if is_secure(param)]
    assert len(secure) == 7
    for name in secure:
        value = re.search(rf'"{name}":\s*\{{\s*"value":\s*"([^"]*)"', text)
        match = value and AZD_VAR.fullmatch(value.group(1))
        assert match and not match.group("default"), f"{name} must be ${{ENV_VAR}} with no default"


# --- no secrets in templates ---------------------------------------------------------------------


def test_no_secret_literals():
    for path in [*BICEP_FILES, INFRA / "main.parameters.json", ROOT / "azure.yaml"]:
        text = path.read_text()
        assert not re.search(r"AccountKey=(?!\$\{)", text), f"{path}: literal account key"
        assert not re.search(r"(SharedAccessSignature|InstrumentationKey|ClientSecret)=", text, re.I), path
        assert not re.search(r"[?&]sig=", text), f"{path}: SAS token"
        for guid in GUID.findall(text):
            assert guid.lower() in ROLE_IDS, f"{path}: {guid} is not a known built-in role id"


NEW_GUID = {"function": {"type": "new_guid"}}


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_secure_parameters_have_no_default(path):
    template = parsed(path)
    for name, param in template.get("parameters", {}).items():
        if is_secure(param):
            # newGuid() is no literal: a fresh random value at each deployment (id-key.bicep's).
            assert param.get("default") in (None, "", NEW_GUID), f"{path.name}: {name} has a default"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_secret_is_an_output(path):
    template = parsed(path)
    secure = {name for name, param in template.get("parameters", {}).items() if is_secure(param)}
    for name, output in template.get("outputs", {}).items():
        expression = json.dumps(output["value"])
        assert "listKeys" not in expression and "list_keys" not in expression, f"{path.name}: {name}"
        assert not any(f'"{param}"' in expression for param in secure), f"{path.name}: {name}"
        if "connectionstring" in name.lower():
            # Only Application Insights' one, which is no secret: it names the ingestion endpoint,
            # and its instrumentation key alone cannot send anything while local auth is disabled.
            assert path.name == "monitoring.bicep", f"{path.name}: {name}"


# --- security properties -------------------------------------------------------------------------


def test_app_storage_is_key_less_and_locked_down():
    storage = the_resource("app/storage.bicep", "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["minimumTlsVersion"] == "TLS1_2"
    assert storage["supportsHttpsTrafficOnly"] is True
    assert storage["allowBlobPublicAccess"] is False
    assert storage["defaultToOAuthAuthentication"] is True
    # Shared keys: off, unless the operator opts into the marketplace table in this very account.
    assert storage["allowSharedKeyAccess"] == "allowSharedKeyAccess"
    assert param_default(bicep("app/storage.bicep"), "allowSharedKeyAccess") is False
    main = bicep("main.bicep")
    opt_in = main["modules"]["storage"]["config"]["params"]["allowSharedKeyAccess"]
    assert opt_in == {
        "operator": {"type": "equals", "operands": {"operand_1": "marketplaceTableMode", "operand_2": "sameAccount"}}
    }
    assert param_default(main, "marketplaceTableMode") == "none"


def test_marketplace_account_holds_only_the_marketplace_table():
    account = the_resource("app/marketplace-account.bicep", "Microsoft.Storage/storageAccounts")["properties"]
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["supportsHttpsTrafficOnly"] is True
    assert account["allowBlobPublicAccess"] is False
    assert account["allowSharedKeyAccess"] is True  # the documented exception: Partner Center needs a key
    table = bicep("app/marketplace-table.bicep")
    assert "separateAccount" in json.dumps(condition(table["modules"]["marketplaceAccount"])), (
        "the key-enabled account exists only in separateAccount mode"
    )
    assert "none" in json.dumps(condition(table["modules"]["connectionSecret"]))


def test_key_vault_uses_rbac_and_soft_delete():
    vault = the_resource("app/keyvault.bicep", "Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert vault["softDeleteRetentionInDays"] == "softDeleteRetentionInDays"
    assert param_default(bicep("app/keyvault.bicep"), "softDeleteRetentionInDays") >= 7
    assert "enablePurgeProtection" in json.dumps(vault["enablePurgeProtection"])
    assert "accessPolicies" not in vault


def test_key_vault_writes_a_secret_only_when_given():
    keyvault = bicep("app/keyvault.bicep")
    secrets = {
        name: m for name, m in keyvault.get("modules", {}).items() if m["detail"]["path"] == "keyvault-secret.bicep"
    }
    assert len(secrets) == 7
    for module in secrets.values():
        value = body(module)["params"]["value"]
        not_empty = {
            "type": "not",
            "operands": {"bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": value}}}},
        }
        assert condition(module) == {"operator": not_empty}, "a secret is written only when given"


def test_the_id_key_is_created_once_with_a_random_value_and_never_written_again():
    """LEADS_ID_KEY must not change on a redeploy (ids and tombstones would stop matching)."""
    template = bicep("app/id-key.bicep")
    (secret,) = resources_of(template, "Microsoft.KeyVault/vaults/secrets").values()
    assert {"type": "onlyIfNotExists"} in secret["decorators"]  # If-None-Match: * on the PUT
    assert condition(secret) is None and body(secret)["name"] == "leads-id-key"
    assert body(secret)["properties"]["value"] == "${firstHalf}${secondHalf}"
    assert body(secret)["properties"]["contentType"]  # what checkov (which skips this file) asks of a secret
    assert all(
        param_default(template, name) == NEW_GUID and is_secure(template["parameters"][name])
        for name in ("firstHalf", "secondHalf")
    )
    modules = bicep("app/keyvault.bicep")["modules"]
    assert [m["detail"]["path"] for m in modules.values()].count("id-key.bicep") == 1
    assert all("firstHalf" not in json.dumps(m) for m in modules.values())  # nobody passes the first value
    assert "LEADS_ID_KEY" in SECRET_SETTINGS


def test_function_app_runs_as_the_user_assigned_identity():
    site = the_resource("app/api.bicep", "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    assert list(site["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    properties = site["properties"]
    assert properties["keyVaultReferenceIdentity"] == "identityId"
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"
    config = properties["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.12"}
    assert config["deployment"]["storage"]["type"] == "blobContainer"
    assert config["deployment"]["storage"]["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert set(config["scaleAndConcurrency"]) >= {"instanceMemoryMB", "maximumInstanceCount"}
    settings = app_settings()
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    main = bicep("main.bicep")
    assert main["modules"]["api"]["config"]["params"]["identityId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "identity",
                "operand_2": {
                    "operator": {"type": "property_accessor", "operands": {"operand_1": "outputs", "operand_2": "id"}}
                },
            },
        }
    }


def test_flex_consumption_plan():
    plan = the_resource("app/api.bicep", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True


def test_the_delivery_function_can_have_an_always_ready_instance_and_has_none_by_default():
    main = bicep("main.bicep")
    assert param_default(main, "deliveryAlwaysReady") is False, "it bills around the clock: opt-in"
    assert azd_parameters()["deliveryAlwaysReady"]["value"] is False
    always_ready = main["modules"]["api"]["config"]["params"]["alwaysReady"]["operator"]
    assert always_ready["type"] == "conditional" and always_ready["operands"]["condition"] == "deliveryAlwaysReady"
    assert always_ready["operands"]["false_value"] == []
    (entry,) = always_ready["operands"]["true_value"]
    assert entry == {"name": f"function:{queue_triggered_function()}", "instanceCount": 1}

    api = bicep("app/api.bicep")
    assert param_default(api, "alwaysReady") == []
    site = the_resource("app/api.bicep", "Microsoft.Web/sites")
    assert site["properties"]["functionAppConfig"]["scaleAndConcurrency"]["alwaysReady"] == "alwaysReady"


def queue_triggered_function() -> str:
    """The name of function_app.py's one queue-triggered function (Flex Consumption scales it on
    its own instances, so always ready names it as function:<name>)."""
    pattern = r"@app\.queue_trigger\([^)]*\)\s*(?:@\w+\s*)*def (\w+)"  # other decorators (@reported) may follow
    (name,) = re.findall(pattern, (ROOT / "function_app.py").read_text())
    return name


def test_basic_publishing_credentials_are_off():
    policies = resources_of(bicep("app/api.bicep"), "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"]: body(p)["properties"]["allow"] for p in policies.values()} == {"scm": False, "ftp": False}


def test_application_insights_takes_only_entra_auth():
    component = the_resource("app/monitoring.bicep", "Microsoft.Insights/components")["properties"]
    assert component["DisableLocalAuth"] is True
    assert component["WorkspaceResourceId"]


def test_email_has_an_azure_managed_domain_linked():
    template = bicep("app/communication.bicep")
    domains = resources_of(template, "Microsoft.Communication/emailServices/domains")
    managed = [d for d in domains.values() if body(d)["properties"]["domainManagement"] == "AzureManaged"]
    assert condition(managed[0]) is None, "the managed domain is always there"
    assert len(managed) == 1
    acs = the_resource("app/communication.bicep", "Microsoft.Communication/communicationServices")
    assert "managedDomain" in json.dumps(acs["properties"]["linkedDomains"])
    settings = app_settings()
    assert {"EMAIL_ENDPOINT", "EMAIL_SENDER"} <= set(settings)


def role_assignments() -> list[tuple[str, str, dict]]:
    """(role name, principal expression, config) of every role assignment."""
    rbac = bicep("app/rbac.bicep")
    roles = rbac["variables"]["roles"]["value"]
    found = []
    for resource in resources_of(rbac, "Microsoft.Authorization/roleAssignments").values():
        config = body(resource)
        (role_var,) = re.findall(
            r'"operand_1": "roles", "operand_2": "(\w+)"', json.dumps(config["properties"]["roleDefinitionId"])
        )
        found.append((ROLE_IDS[roles[role_var]], config["properties"]["principalId"], config))
    return found


def test_role_assignments_are_least_privilege_and_named_with_guid():
    assignments = role_assignments()
    for path in BICEP_FILES:
        for resource in resources_of(parsed(path), "Microsoft.Authorization/roleAssignments").values():
            assert path.name == "rbac.bicep", "all role assignments live in app/rbac.bicep"
            name = body(resource)["name"]
            assert isinstance(name, dict) and name["function"]["type"] == "guid", name
    app_roles = {role for role, principal, _ in assignments if principal == "appPrincipalId"}
    assert app_roles == APP_ROLES
    rbac = bicep("app/rbac.bicep")
    targets = {name for name, r in rbac["resources"].items() if r["existing"]}  # the resources used, one each
    for role, _, config in assignments:
        assert config["properties"]["principalType"] in ("ServicePrincipal", "operatorPrincipalType")
        assert config["scope"] in targets, f"{role} must be scoped to the one resource it is for"
    operator_roles = {role for role, principal, _ in assignments if principal == "operatorPrincipalId"}
    assert operator_roles == {
        "Key Vault Secrets Officer",
        "Storage Table Data Contributor",
        "Storage Queue Data Contributor",
    }


def test_outputs_for_azd_and_partner_center():
    outputs = bicep("main.bicep")["outputs"]
    for name in (
        "AZURE_LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_RESOURCE_GROUP",
        "SERVICE_API_NAME",
        "AZURE_FUNCTION_NAME",
        "LEADS_HTTPS_ENDPOINT",
        "MARKETPLACE_TABLE_NAME",
        "MARKETPLACE_TABLE_CONNECTION_SECRET_NAME",
        "AZURE_KEY_VAULT_NAME",
    ):
        assert name in outputs, name
    assert outputs["LEADS_HTTPS_ENDPOINT"]["value"].endswith("/api/leads"), "the key (?code=) is never an output"
    # docs/dynamics.md: the Application ID of the Dynamics application user is the app's identity's client ID
    assert outputs["APP_IDENTITY_CLIENT_ID"]["value"] == IDENTITY_CLIENT_ID


# identity.outputs.clientId as pycep-parser reads it
IDENTITY_CLIENT_ID = {
    "operator": {
        "type": "property_accessor",
        "operands": {
            "operand_1": "identity",
            "operand_2": {
                "operator": {"type": "property_accessor", "operands": {"operand_1": "outputs", "operand_2": "clientId"}}
            },
        },
    }
}


def test_dynamics_uses_the_app_identity_unless_an_app_registration_is_named():
    variables = bicep("main.bicep")["variables"]
    uses_identity = json.dumps(variables["dynamicsUsesIdentity"]["value"])
    assert json.dumps(IDENTITY_CLIENT_ID) in uses_identity and "dynamicsClientId" in uses_identity
    assert "dynamicsUsesIdentity" in json.dumps(variables["useDynamicsSecret"]["value"]), (
        "an app registration's secret is referenced only when it is the one in use"
    )


def test_resource_names_come_from_the_resource_token():
    main = bicep("main.bicep")
    text = (INFRA / "main.bicep").read_text()
    assert "var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))" in text
    assert main["variables"]["tags"]["value"] == {"'azd-env-name'": "environmentName"}
    abbreviations = json.loads((INFRA / "abbreviations.json").read_text())
    for reference in set(re.findall(r"abbrs\.(\w+)", (INFRA / "main.bicep").read_text())):
        assert reference in abbreviations, reference


# --- azure.yaml and host.json --------------------------------------------------------------------


def test_azure_yaml_names_the_python_function_service():
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert config["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    api = the_resource("app/api.bicep", "Microsoft.Web/sites")
    assert "azd-service-name" in json.dumps(api["tags"])
    assert bicep("main.bicep")["modules"]["api"]["config"]["params"]["serviceName"] == "api"


def test_host_json_fits_flex_consumption():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    levels = host["logging"]["logLevel"]
    assert levels["default"] in ("Warning", "Information", "Error")
    assert levels.get("Function") in ("Information", "Warning")
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert {"Request", "Exception"} <= set(sampling["excludedTypes"].split(";")), "errors are never sampled away"


def test_host_json_polls_an_idle_delivery_queue_within_seconds():
    # The queue extension's default maxPollingInterval is a minute: an idle instance could then
    # sit on a new lead's message that long (docs/deploy.md, "Latency").
    from leads.local.serve import HostOptions

    queues = HostOptions.read(ROOT / "host.json").queues
    assert queues.max_polling_interval <= timedelta(seconds=2)
    assert queues.visibility_timeout == timedelta(seconds=30) and queues.max_dequeue_count == 5


# --- checkov -------------------------------------------------------------------------------------


# checkov pins versions of packages the app shares (pycep-parser, packaging), so `make test` gives it a
# virtualenv of its own.
CHECKOV = Path(__file__).resolve().parent.parent / ".venv-checkov" / "bin" / "checkov"


def test_checkov_finds_nothing_unjustified():
    """checkov's Bicep checks: no failure, every skip carries its reason (`checkov:skip=ID: why`)."""
    assert CHECKOV.exists(), "checkov is not installed: `make test` installs it into .venv-checkov"
    # checkov's pinned Bicep parser (pycep-parser 0.5) does not read @onlyIfNotExists: the one file
    # that uses it is left out, and test_the_id_key_is_created_once_... asserts what matters there.
    command = [
        str(CHECKOV),
        "-d",
        str(INFRA),
        "--framework",
        "bicep",
        "--skip-download",
        "--output",
        "json",
        "--skip-path",
        "id-key.bicep",
    ]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # no look-up of Prisma Cloud ids: offline
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.stdout.strip().startswith(("{", "[")), run.stderr[-2000:]
    report = json.loads(run.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep_report,) = [r for r in reports if r.get("check_type") == "bicep"]
    summary = bicep_report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in bicep_report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0, "checkov silently skips files it cannot parse"
    assert failed == []
    assert summary["passed"] > 0
    for check in bicep_report["results"]["skipped_checks"]:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) > 20 and reason != "No comment provided", check["check_id"]
