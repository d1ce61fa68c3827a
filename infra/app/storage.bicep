// The app's own storage account: the Functions host (deployment package, timer leases), the lead
// store's tables (Leads, LeadsCheckpoints, ... named from LEADS_TABLE_PREFIX) and the delivery
// queue. The app reaches it only through its managed identity, so shared-key access is off.
//
// Tables and queues are not declared here: the app creates the ones it needs on first use (the
// identity holds the data-contributor roles that allow it), so their names live in one place, the
// code, and a new table in a later release needs no template change.
//
// The one exception to key-less access: when the marketplace's Azure Table destination is pointed
// at THIS account (marketplaceTableMode = 'sameAccount' in main.bicep), the marketplace needs an
// account key to write its table, so main.bicep turns allowSharedKeyAccess on. That key opens
// every table, queue and blob in the account (including the lead store and the deployment
// package); 'separateAccount' keeps the key away from them and is the recommended choice.

param name string
param location string = resourceGroup().location
param tags object = {}
param deploymentContainerName string
@description('Shared-key (account key) access. Off unless the marketplace table lives in this account.')
param allowSharedKeyAccess bool = false
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Geo-redundant by default: the lead store is the durable record of every lead.')
param skuName string = 'Standard_GRS'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Default action Allow. A Flex Consumption app without VNet integration reaches its storage over the public endpoint from addresses that cannot be listed; every data-plane call is authorized by Entra RBAC (shared keys off).
  // checkov:skip=CKV_AZURE_59: Public network access stays on for the same reason; with VNet integration, add private endpoints and turn it off.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// Flex Consumption pulls the app package from this container (functionAppConfig.deployment).
resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
