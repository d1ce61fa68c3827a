// Marketplace lead router: everything `azd up` creates. Layout and naming follow
// Azure-Samples/functions-quickstart-python-http-azd (resource group per environment, names from
// abbreviations.json + resourceToken, one module per concern under app/).
//
// Every setting the app reads (leads/core/settings.py) is set below from a parameter; an optional one
// whose parameter is empty is not written at all, so the code's default applies. A few settings
// are left to the code on purpose (local-only ones such as EMAIL_OUTBOX_DIR, retry tunables, API
// base URLs for sovereign clouds and tests): tests/test_infra.py lists them with the reason and
// checks that code and template stay in step.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; seeds the resource token and names the resource group.')
param environmentName string

@minLength(1)
@description('Region for all resources. It must offer Flex Consumption: az functionapp list-flexconsumption-locations')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; empty gives rg-<environmentName>.')
param resourceGroupName string = ''

@description('Object id of the operator running azd (AZURE_PRINCIPAL_ID). Gets Key Vault Secrets Officer and table/queue data access for the CLI. Empty: no operator roles.')
param principalId string = ''
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

// --- the marketplace's Azure Table destination (see app/marketplace-table.bicep) -------------
@description('none: HTTPS endpoint only. separateAccount: a dedicated storage account with a key, for the marketplace table (recommended when you use the table destination). sameAccount: the app\'s own account, with shared keys on.')
@allowed([
  'none'
  'separateAccount'
  'sameAccount'
])
param marketplaceTableMode string = 'none'
@description('MARKETPLACE_TABLE_NAME: the table name you enter in Partner Center.')
param marketplaceTableName string = 'MarketplaceLeads'

// --- platform --------------------------------------------------------------------------------
@description('Key Vault purge protection. Recommended for production; while on, `azd down --purge` cannot purge the vault and its name stays taken until the retention ends.')
param keyVaultEnablePurgeProtection bool = false
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
@description('true keeps one instance of the delivery function (deliver_lead) always ready: the first lead after a quiet spell is mailed within seconds instead of after an instance start. It bills around the clock (about 21 USD a month at 2,048 MB; docs/deploy.md, "Latency and the always-ready instance").')
param deliveryAlwaysReady bool = false
@description('Data location of Communication Services and the Email service.')
param communicationDataLocation string = 'United States'
@description('Your own email sender domain; empty uses only the Azure-managed domain.')
param emailCustomDomain string = ''
@description('true once emailCustomDomain is verified: it is then linked and used for EMAIL_SENDER.')
param emailCustomDomainVerified bool = false

// --- app settings (leads/core/settings.py); empty means "not set": the code's default applies ------
@description('LEADS_TABLE_PREFIX')
param leadsTablePrefix string = 'Leads'
@description('LEADS_POLL_SCHEDULE: NCRONTAB of the marketplace table poll (six fields, seconds first).')
param leadsPollSchedule string = '*/30 * * * * *'
@description('LEADS_POLL_OVERLAP_MINUTES')
param leadsPollOverlapMinutes string = '10'
@description('LEADS_POLL_FULL_SCAN_MINUTES: how often the poll reads the whole marketplace table as a safety net.')
param leadsPollFullScanMinutes string = '60'
@description('LEADS_BACKFILL_DAYS: leads older than this when taken in are stored but not delivered.')
param leadsBackfillDays string = '7'
@description('LEADS_DEDUPE_WINDOW_HOURS')
param leadsDedupeWindowHours string = '24'
@description('LEADS_RETENTION_DAYS: erase the personal data of leads older than this many days; empty keeps everything.')
param leadsRetentionDays string = ''
@description('LEADS_RETENTION_SCHEDULE: NCRONTAB of the daily retention run.')
param leadsRetentionSchedule string = '0 30 3 * * *'
@description('LEADS_DELIVERY_QUEUE: the Storage queue of deliveries (the queue trigger binds to it).')
param leadsDeliveryQueue string = 'leads-deliveries'
@description('LEADS_SWEEP_SCHEDULE: NCRONTAB of the sweep that re-enqueues lost delivery messages.')
param leadsSweepSchedule string = '0 */2 * * * *'
@description('LEADS_VERIFY_SCHEDULE: NCRONTAB of the maintenance run that verifies and repairs the recent days.')
param leadsVerifySchedule string = '0 */15 * * * *'
@description('LEADS_VERIFY_DAYS: how many recent days each maintenance run verifies.')
param leadsVerifyDays string = '2'
@description('LEADS_CLAIM_MINUTES: how long a worker holds a delivery it sends; longer than a send may take (2 minutes).')
param leadsClaimMinutes string = '5'
@description('LEADS_ROUTING: which leads go to which destinations; empty uses the code default.')
param leadsRouting string = ''
@description('DYNAMICS_MAPPING: field mapping, the lead row\'s own columns a lead fills (JSON, docs/settings.md); empty: the built-in fields.')
param dynamicsMapping string = ''
@description('SALESFORCE_MAPPING: field mapping, the org\'s own Lead fields a lead fills (JSON, docs/settings.md); empty: the built-in fields.')
param salesforceMapping string = ''
@description('MARKETO_MAPPING: field mapping, the instance\'s own person fields a lead fills (JSON, docs/settings.md); empty: the built-in fields.')
param marketoMapping string = ''
@description('HUBSPOT_MAPPING: field mapping, the portal\'s own contact properties a lead fills (JSON, docs/settings.md); empty: the built-in fields.')
param hubspotMapping string = ''
@description('LEADS_TEST_LEADS: what to do with the marketplace\'s MSFT_TEST_ validation leads.')
@allowed([
  'notify'
  'deliver'
  'drop'
])
param leadsTestLeads string = 'notify'
@description('LEADS_ALERT_TO: who the app mails when deliveries fail for good or leads stop arriving.')
param leadsAlertTo string = ''
@description('Who Azure Monitor mails (addresses separated by ;) when the app is down, deliveries or functions fail, messages reach the poison queue, leads stop arriving or calls are refused; empty: LEADS_ALERT_TO; both empty: no alert rules.')
param operatorsEmail string = ''
@description('LEADS_SILENCE_DAYS: the fewest days without a lead before the silence alarm.')
param leadsSilenceDays string = '3'
@description('EMAIL_TO: lead notification recipients; empty disables the email destination.')
param emailTo string = ''
@description('EMAIL_PII: how much personal data notification mails carry.')
@allowed([
  'full'
  'masked'
  'none'
])
param emailPii string = 'full'
@description('EMAIL_SENDER override; empty uses DoNotReply@ the linked domain.')
param emailSender string = ''
@description('EMAIL_PER_MINUTE override; empty: 5 on the Azure-managed domain, 30 on a verified custom domain (the ACS limits).')
param emailPerMinute string = ''
@description('EMAIL_PER_HOUR override; empty: 10 on the Azure-managed domain, 100 on a verified custom domain (the ACS limits).')
param emailPerHour string = ''
@description('LEADS_PORTAL_URL: where sales finds leads (named in mails without personal data).')
param leadsPortalUrl string = ''
@description('WEBHOOK_URL')
param webhookUrl string = ''
@description('DYNAMICS_URL, e.g. https://contoso.crm.dynamics.com')
param dynamicsUrl string = ''
@description('DYNAMICS_TENANT_ID')
param dynamicsTenantId string = ''
@description('DYNAMICS_CLIENT_ID: an app registration\'s client ID (with DYNAMICS_CLIENT_SECRET); empty for the app\'s own managed identity (output APP_IDENTITY_CLIENT_ID).')
param dynamicsClientId string = ''
@description('SALESFORCE_OID: Web-to-Lead organisation id.')
param salesforceOid string = ''
@description('SALESFORCE_URL: instance URL for the REST API.')
param salesforceUrl string = ''
@description('SALESFORCE_CLIENT_ID')
param salesforceClientId string = ''
@description('SALESFORCE_EXTERNAL_ID_FIELD')
param salesforceExternalIdField string = ''
@description('MARKETO_URL')
param marketoUrl string = ''
@description('MARKETO_CLIENT_ID')
param marketoClientId string = ''
@description('MARKETO_FORM_ID')
param marketoFormId string = ''
@description('true to point HUBSPOT_TOKEN at its Key Vault secret even when hubspotToken is not passed here (you set the secret with az keyvault secret set).')
param hubspotEnabled bool = false
@description('true to point TEAMS_WEBHOOK_URL at its Key Vault secret (teams-webhook-url) even when teamsWebhookUrl is not passed here.')
param teamsEnabled bool = false
@description('true to point SLACK_WEBHOOK_URL at its Key Vault secret (slack-webhook-url) even when slackWebhookUrl is not passed here.')
param slackEnabled bool = false
@description('true to point TEAMS_CHANNELS (the named Teams channels routing rules use) at its Key Vault secret teams-channels.')
param teamsChannelsEnabled bool = false
@description('true to point SLACK_CHANNELS (the named Slack channels routing rules use) at its Key Vault secret slack-channels.')
param slackChannelsEnabled bool = false

// --- secrets: stored in Key Vault, referenced from app settings, never output ---------------
@secure()
@description('DYNAMICS_CLIENT_SECRET (Key Vault secret dynamics-client-secret).')
param dynamicsClientSecret string = ''
@secure()
@description('SALESFORCE_CLIENT_SECRET (Key Vault secret salesforce-client-secret).')
param salesforceClientSecret string = ''
@secure()
@description('MARKETO_CLIENT_SECRET (Key Vault secret marketo-client-secret).')
param marketoClientSecret string = ''
@secure()
@description('HUBSPOT_TOKEN (Key Vault secret hubspot-token).')
param hubspotToken string = ''
@secure()
@description('WEBHOOK_SECRET (Key Vault secret webhook-secret).')
param webhookSecret string = ''
@secure()
@description('TEAMS_WEBHOOK_URL, the default Teams channel (Key Vault secret teams-webhook-url): the URL carries its signature.')
param teamsWebhookUrl string = ''
@secure()
@description('SLACK_WEBHOOK_URL, the default Slack channel (Key Vault secret slack-webhook-url): the URL is its secret.')
param slackWebhookUrl string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}leads-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}leads-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    // Shared keys stay off unless the marketplace table is put in this account (opt-in).
    allowSharedKeyAccess: marketplaceTableMode == 'sameAccount'
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    enablePurgeProtection: keyVaultEnablePurgeProtection
    dynamicsClientSecret: dynamicsClientSecret
    salesforceClientSecret: salesforceClientSecret
    marketoClientSecret: marketoClientSecret
    hubspotToken: hubspotToken
    webhookSecret: webhookSecret
    teamsWebhookUrl: teamsWebhookUrl
    slackWebhookUrl: slackWebhookUrl
  }
}

module marketplaceTable 'app/marketplace-table.bicep' = {
  name: 'marketplace-table'
  scope: rg
  params: {
    mode: marketplaceTableMode
    location: location
    tags: tags
    separateAccountName: '${abbrs.storageStorageAccounts}mkt${resourceToken}'
    appStorageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
  }
}

module communication 'app/communication.bicep' = {
  name: 'communication'
  scope: rg
  params: {
    communicationServiceName: '${abbrs.communicationServicesCommunicationServices}${resourceToken}'
    emailServiceName: '${abbrs.communicationServicesEmailServices}${resourceToken}'
    tags: tags
    dataLocation: communicationDataLocation
    customDomain: emailCustomDomain
    customDomainVerified: emailCustomDomainVerified
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    communicationServiceName: communication.outputs.communicationServiceName
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
  }
}

// A secret's app setting points at its Key Vault secret when the secret is passed here, or when
// the destination it belongs to is configured (so a secret you set later with
// `az keyvault secret set` is picked up without re-provisioning). Otherwise the setting is absent.
var secretRef = '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/'
// Dynamics uses the app's managed identity unless DYNAMICS_CLIENT_ID names another principal (an app
// registration, whose secret is then referenced: deployments made before the identity path keep it).
var dynamicsUsesIdentity = !empty(dynamicsUrl) && (empty(dynamicsClientId) || dynamicsClientId == identity.outputs.clientId)
var useDynamicsSecret = !empty(dynamicsClientSecret) || (!empty(dynamicsUrl) && !dynamicsUsesIdentity)
var useSalesforceSecret = !empty(salesforceClientSecret) || !empty(salesforceClientId)
var useMarketoSecret = !empty(marketoClientSecret) || !empty(marketoClientId)
var useHubspotToken = !empty(hubspotToken) || hubspotEnabled
var useWebhookSecret = !empty(webhookSecret) || !empty(webhookUrl)
var useTeamsWebhook = !empty(teamsWebhookUrl) || teamsEnabled
var useSlackWebhook = !empty(slackWebhookUrl) || slackEnabled
var readsSeparateTable = marketplaceTableMode == 'separateAccount'
var sendsFromCustomDomain = !empty(emailCustomDomain) && emailCustomDomainVerified

var coreSettings = {
  LEADS_TABLE_PREFIX: leadsTablePrefix
  LEADS_POLL_SCHEDULE: leadsPollSchedule
  LEADS_SWEEP_SCHEDULE: leadsSweepSchedule
  LEADS_VERIFY_SCHEDULE: leadsVerifySchedule
  LEADS_VERIFY_DAYS: leadsVerifyDays
  LEADS_CLAIM_MINUTES: leadsClaimMinutes
  LEADS_RETENTION_SCHEDULE: leadsRetentionSchedule
  LEADS_DELIVERY_QUEUE: leadsDeliveryQueue
  LEADS_POLL_OVERLAP_MINUTES: leadsPollOverlapMinutes
  LEADS_POLL_FULL_SCAN_MINUTES: leadsPollFullScanMinutes
  LEADS_BACKFILL_DAYS: leadsBackfillDays
  LEADS_DEDUPE_WINDOW_HOURS: leadsDedupeWindowHours
  LEADS_TEST_LEADS: leadsTestLeads
  MARKETPLACE_TABLE_NAME: marketplaceTableName
  EMAIL_ENDPOINT: communication.outputs.endpoint
  EMAIL_SENDER: empty(emailSender) ? communication.outputs.sender : emailSender
  EMAIL_PII: emailPii
  EMAIL_PER_MINUTE: !empty(emailPerMinute) ? emailPerMinute : (sendsFromCustomDomain ? '30' : '5')
  // The key of every digest of personal data: a secret the vault module creates once (never rotated).
  LEADS_ID_KEY: '${secretRef}${keyVault.outputs.idKeySecretName})'
  EMAIL_PER_HOUR: !empty(emailPerHour) ? emailPerHour : (sendsFromCustomDomain ? '100' : '10')
  LEADS_SILENCE_DAYS: leadsSilenceDays
}

var appSettings = union(coreSettings,
  readsSeparateTable ? { MARKETPLACE_TABLE_CONNECTION: '${secretRef}marketplace-table-connection)' } : {},
  empty(leadsRouting) ? {} : { LEADS_ROUTING: leadsRouting },
  empty(dynamicsMapping) ? {} : { DYNAMICS_MAPPING: dynamicsMapping },
  empty(salesforceMapping) ? {} : { SALESFORCE_MAPPING: salesforceMapping },
  empty(marketoMapping) ? {} : { MARKETO_MAPPING: marketoMapping },
  empty(hubspotMapping) ? {} : { HUBSPOT_MAPPING: hubspotMapping },
  empty(leadsRetentionDays) ? {} : { LEADS_RETENTION_DAYS: leadsRetentionDays },
  empty(leadsAlertTo) ? {} : { LEADS_ALERT_TO: leadsAlertTo },
  empty(emailTo) ? {} : { EMAIL_TO: emailTo },
  empty(leadsPortalUrl) ? {} : { LEADS_PORTAL_URL: leadsPortalUrl },
  empty(webhookUrl) ? {} : { WEBHOOK_URL: webhookUrl },
  useWebhookSecret ? { WEBHOOK_SECRET: '${secretRef}webhook-secret)' } : {},
  empty(dynamicsUrl) ? {} : { DYNAMICS_URL: dynamicsUrl },
  empty(dynamicsTenantId) ? {} : { DYNAMICS_TENANT_ID: dynamicsTenantId },
  dynamicsUsesIdentity ? { DYNAMICS_CLIENT_ID: identity.outputs.clientId } : {},
  empty(dynamicsClientId) || dynamicsUsesIdentity ? {} : { DYNAMICS_CLIENT_ID: dynamicsClientId },
  useDynamicsSecret ? { DYNAMICS_CLIENT_SECRET: '${secretRef}dynamics-client-secret)' } : {},
  empty(salesforceOid) ? {} : { SALESFORCE_OID: salesforceOid },
  empty(salesforceUrl) ? {} : { SALESFORCE_URL: salesforceUrl },
  empty(salesforceClientId) ? {} : { SALESFORCE_CLIENT_ID: salesforceClientId },
  useSalesforceSecret ? { SALESFORCE_CLIENT_SECRET: '${secretRef}salesforce-client-secret)' } : {},
  empty(salesforceExternalIdField) ? {} : { SALESFORCE_EXTERNAL_ID_FIELD: salesforceExternalIdField },
  empty(marketoUrl) ? {} : { MARKETO_URL: marketoUrl },
  empty(marketoClientId) ? {} : { MARKETO_CLIENT_ID: marketoClientId },
  useMarketoSecret ? { MARKETO_CLIENT_SECRET: '${secretRef}marketo-client-secret)' } : {},
  empty(marketoFormId) ? {} : { MARKETO_FORM_ID: marketoFormId },
  useHubspotToken ? { HUBSPOT_TOKEN: '${secretRef}hubspot-token)' } : {},
  useTeamsWebhook ? { TEAMS_WEBHOOK_URL: '${secretRef}teams-webhook-url)' } : {},
  useSlackWebhook ? { SLACK_WEBHOOK_URL: '${secretRef}slack-webhook-url)' } : {},
  teamsChannelsEnabled ? { TEAMS_CHANNELS: '${secretRef}teams-channels)' } : {},
  slackChannelsEnabled ? { SLACK_CHANNELS: '${secretRef}slack-channels)' } : {})

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    serviceName: 'api'
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    maximumInstanceCount: maximumInstanceCount
    // Flex Consumption scales each non-HTTP function on its own instances; "function:<name>"
    // names one for always ready (the groups http, durable and blob name the others).
    alwaysReady: deliveryAlwaysReady ? [
      {
        name: 'function:deliver_lead'
        instanceCount: 1
      }
    ] : []
    appSettings: appSettings
  }
  // Roles first, so the host's storage connection and the Key Vault references resolve at the
  // app's first start instead of failing until the assignments propagate.
  dependsOn: [
    rbac
    marketplaceTable
  ]
}

// Azure Monitor's alerts (they need nothing of the app to run) and the operators' workbook.
var alertsEmail = empty(operatorsEmail) ? leadsAlertTo : operatorsEmail

module alerts 'app/alerts.bicep' = if (!empty(alertsEmail)) {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'alert-${resourceToken}'
    location: location
    tags: tags
    operatorsEmail: alertsEmail
    workspaceId: monitoring.outputs.logAnalyticsId
    functionAppId: api.outputs.id
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    displayName: 'Marketplace leads (${environmentName})'
    location: location
    tags: tags
    workspaceId: monitoring.outputs.logAnalyticsId
  }
}

// azd conventions
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = api.outputs.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri

// For Partner Center (docs/deploy.md). No secret is ever an output.
@description('HTTPS endpoint lead destination: append ?code=<function key> (az functionapp function keys list ... --function-name ingest_lead).')
output LEADS_HTTPS_ENDPOINT string = '${api.outputs.uri}/api/leads'
output LEADS_HEALTH_URL string = '${api.outputs.uri}/api/health'
output MARKETPLACE_TABLE_MODE string = marketplaceTableMode
output MARKETPLACE_TABLE_NAME string = marketplaceTableName
output MARKETPLACE_TABLE_ACCOUNT_NAME string = marketplaceTable.outputs.accountName
@description('Key Vault secret holding the Azure Table destination connection string (empty when marketplaceTableMode is none).')
output MARKETPLACE_TABLE_CONNECTION_SECRET_NAME string = marketplaceTable.outputs.connectionSecretName
output MARKETPLACE_TABLE_INSTRUCTIONS string = marketplaceTableMode == 'none' ? 'No Azure Table destination deployed (marketplaceTableMode=none): use LEADS_HTTPS_ENDPOINT in Partner Center.' : 'Partner Center > offer > Customer leads > Azure Table: connection string = az keyvault secret show --vault-name ${keyVault.outputs.name} --name marketplace-table-connection --query value -o tsv ; table name = ${marketplaceTableName}'

@description('Client ID of the app\'s managed identity: the Application ID of the Dynamics 365 application user (docs/dynamics.md).')
output APP_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output EMAIL_ENDPOINT string = communication.outputs.endpoint
output EMAIL_SENDER string = empty(emailSender) ? communication.outputs.sender : emailSender
output EMAIL_CUSTOM_DOMAIN_VERIFICATION_RECORDS object = communication.outputs.customDomainVerificationRecords
