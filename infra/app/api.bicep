// The function app on the Flex Consumption plan (Linux, Python 3.12), running as the user-assigned
// identity. Follows the Flex layout of Azure-Samples/functions-quickstart-python-http-azd:
// functionAppConfig carries the runtime, the scale limits and the blob container the package is
// deployed to. Settings that Flex Consumption rejects (FUNCTIONS_WORKER_RUNTIME,
// FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE, WEBSITE_CONTENT*, SCM_DO_BUILD_DURING_DEPLOYMENT,
// ...) are deliberately absent: functionAppConfig replaces them.

param name string
param planName string
param location string = resourceGroup().location
param tags object = {}
@description('azd service this app hosts (azure.yaml).')
param serviceName string = 'api'
param storageAccountName string
param deploymentContainerName string
@description('Resource id of the user-assigned identity.')
param identityId string
param identityClientId string
param applicationInsightsConnectionString string
@description('The app\'s own settings (LEADS_*, EMAIL_*, destinations), merged with the platform ones below.')
param appSettings object = {}
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048
@description('Upper bound on scale-out. It also bounds how hard the app can hit CRM APIs and ACS at once.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
@description('Always-ready instances, per function ("function:<name>") or group ("http", "durable", "blob"): [{ name, instanceCount }]. They bill whether or not they run.')
param alwaysReady array = []

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Zone redundancy on Flex Consumption exists only in some regions and is an opt-in there; this template must deploy in every Flex region.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

// Host storage over the identity (no connection string): AzureWebJobsStorage itself stays unset.
// leads/core/storage.py reads the same __tableServiceUri / __queueServiceUri / __clientId settings.
var platformSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  // Application Insights has local auth disabled: the host and the app authenticate with Entra.
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Public network access must stay on: the marketplace POSTs leads from the internet. The lead route requires the function key (?code=) that only Partner Center holds.
  // checkov:skip=CKV_AZURE_17: Client certificates: the marketplace cannot present one; it authenticates with the function key.
  // checkov:skip=CKV_AZURE_18: HTTP/2: the only client (the marketplace) POSTs one small JSON body per lead over HTTP/1.1; the setting is left at the platform default.
  // checkov:skip=CKV_AZURE_67: Same as CKV_AZURE_18 (HTTP version check for function apps).
  // checkov:skip=CKV_AZURE_212: Minimum instances for failover: Flex Consumption scales from zero and starts instances on demand; always-ready instances bill around the clock, so they are opt-in (deliveryAlwaysReady, for the delivery function only). Leads are durable in storage before the 2xx, so a cold start delays, never loses, a lead.
  // checkov:skip=CKV_AZURE_213: App Service health check is not available on Flex Consumption; GET /api/health serves external probes instead.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    // The marketplace POSTs leads from the internet: the endpoint stays public, guarded by the
    // function key (?code=) that only Partner Center holds.
    publicNetworkAccess: 'Enabled'
    // @Microsoft.KeyVault(...) app settings are resolved as the user-assigned identity (the
    // default would be a system-assigned identity, which this app does not have).
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        alwaysReady: alwaysReady
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.12'
      }
    }
  }
}

// The whole set is written on every provision: a setting added by hand in the portal is removed
// by the next `azd provision` (set it through a parameter instead).
resource functionAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: False positive: checkov applies its siteConfig ('web') checks to every Microsoft.Web/sites/config resource; this one is 'appsettings'. App Service Authentication (Easy Auth) does not fit the marketplace, which sends no bearer token; the lead route requires the function key.
  // checkov:skip=CKV_AZURE_63: False positive ('appsettings', not 'web'). HTTP logs are App Service file-system logs; the function app logs requests to Application Insights.
  // checkov:skip=CKV_AZURE_65: False positive ('appsettings', not 'web'). Detailed error pages are an App Service feature for web apps; errors go to Application Insights.
  // checkov:skip=CKV_AZURE_66: False positive ('appsettings', not 'web'). Failed request tracing is an IIS/App Service feature; failures go to Application Insights.
  // checkov:skip=CKV_AZURE_80: False positive ('appsettings', not 'web'). No .NET Framework here: the runtime is Python 3.12 (functionAppConfig.runtime).
  // checkov:skip=CKV_AZURE_88: False positive ('appsettings', not 'web'). No Azure Files content share: Flex Consumption runs the package from a blob container (functionAppConfig.deployment).
  // checkov:skip=CKV_AZURE_222: False positive ('appsettings', not 'web'). Public network access is set, and justified, on the site above.
  parent: functionApp
  name: 'appsettings'
  properties: union(appSettings, platformSettings)
}

// azd deploys with an Entra token; publishing with a username/password is never needed.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output hostName string = functionApp.properties.defaultHostName
output uri string = 'https://${functionApp.properties.defaultHostName}'
