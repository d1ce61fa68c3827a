// Where the marketplace writes leads when an offer's lead destination is "Azure Table".
//
// Partner Center accepts only a storage account CONNECTION STRING for that destination: an account
// key, not an identity. That makes this the one place in the deployment that needs shared-key
// access, so it is opt-in (marketplaceTableMode in main.bicep):
//
//   none             No table destination (the offer uses the HTTPS endpoint). No key anywhere.
//   separateAccount  A second, dedicated storage account with shared-key access on. Only its table
//                    service is used: the marketplace writes there with the key, the app reads
//                    there with the same key (MARKETPLACE_TABLE_CONNECTION, a Key Vault
//                    reference). If the key leaks, only the marketplace's own table is exposed,
//                    never the lead store, the delivery queue or the app package. Recommended.
//   sameAccount      The table lives in the app's own account, which then has shared-key access
//                    turned on (storage.bicep). One account fewer, but the key Partner Center
//                    holds opens the app's whole storage. The app itself still reads with its
//                    identity (MARKETPLACE_TABLE_CONNECTION stays empty).
//
// Either way the connection string goes into the Key Vault secret 'marketplace-table-connection'
// and is never a deployment output: read it with `az keyvault secret show` (docs/deploy.md).

@allowed([
  'none'
  'separateAccount'
  'sameAccount'
])
param mode string = 'none'
param location string = resourceGroup().location
param tags object = {}
@description('Name of the dedicated account created when mode is separateAccount.')
param separateAccountName string
@description('The app\'s own storage account, used when mode is sameAccount.')
param appStorageAccountName string
param keyVaultName string

var accountName = mode == 'separateAccount' ? separateAccountName : appStorageAccountName

module marketplaceAccount 'marketplace-account.bicep' = if (mode == 'separateAccount') {
  name: 'marketplace-account'
  params: {
    name: separateAccountName
    location: location
    tags: tags
  }
}

resource tableAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (mode != 'none') {
  name: accountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

module connectionSecret 'keyvault-secret.bicep' = if (mode != 'none') {
  name: 'secret-marketplace-table-connection'
  params: {
    vaultName: vault.name
    name: 'marketplace-table-connection'
    contentType: 'Azure Storage connection string (Partner Center lead destination: Azure Table)'
    value: 'DefaultEndpointsProtocol=https;AccountName=${accountName};AccountKey=${tableAccount.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'
  }
  dependsOn: [
    marketplaceAccount
  ]
}

output accountName string = mode == 'none' ? '' : accountName
output connectionSecretName string = mode == 'none' ? '' : 'marketplace-table-connection'
