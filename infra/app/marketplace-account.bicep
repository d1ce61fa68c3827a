// The dedicated storage account for the marketplace's Azure Table destination
// (marketplaceTableMode = 'separateAccount'; see marketplace-table.bicep for the trade-off).
// Only its table service is used. Shared-key access is on because Partner Center can only
// authenticate with an account key; nothing else lives in this account.

param name string
param location string = resourceGroup().location
param tags object = {}
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_GRS'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Default action Allow. The marketplace writes leads from Microsoft service addresses that are not published, so no firewall rule can admit it. The account holds nothing but the marketplace's table.
  // checkov:skip=CKV_AZURE_59: Public network access stays on for the same reason.
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
    // The marketplace authenticates with the account key (the reason this account exists).
    allowSharedKeyAccess: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

output name string = account.name
