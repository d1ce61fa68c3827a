// Key Vault for the CRM and webhook secrets (and the marketplace table's connection string, see
// marketplace-table.bicep). Access is Azure RBAC only (no access policies): the function app's
// identity reads secrets (Key Vault Secrets User), the deploying operator may manage them (Key
// Vault Secrets Officer, when principalId is given). App settings point at secrets with
// versionless @Microsoft.KeyVault(SecretUri=...) references, so a new secret version (a rotated
// Dynamics client secret) is picked up without a template change.
//
// A secret is written only when its value is given here (but for leads-id-key, created once: id-key.bicep). An empty parameter leaves the vault
// alone, so a secret set with `az keyvault secret set` survives the next `azd provision`.

param name string
param location string = resourceGroup().location
param tags object = {}
@description('Purge protection: a deleted vault or secret cannot be purged before the retention ends. Cannot be turned off once on.')
param enablePurgeProtection bool = false
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@secure()
param dynamicsClientSecret string = ''
@secure()
param salesforceClientSecret string = ''
@secure()
param marketoClientSecret string = ''
@secure()
param hubspotToken string = ''
@secure()
param webhookSecret string = ''
@secure()
param teamsWebhookUrl string = ''
@secure()
param slackWebhookUrl string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Default action Allow. App Service resolves Key Vault references over the public endpoint, and a Flex Consumption app without VNet integration has no fixed outbound address to allow. Access is Entra RBAC only (no access policies, no keys).
  // checkov:skip=CKV_AZURE_189: Public network access stays on for the same reason; with VNet integration add a private endpoint and turn it off.
  // checkov:skip=CKV_AZURE_110: Purge protection is a parameter (enablePurgeProtection, main.bicep keyVaultEnablePurgeProtection), off by default so `azd down --purge` and a fresh `azd up` with the same environment name work. Soft delete (90 days) is always on. Turn it on for production.
  // checkov:skip=CKV_AZURE_42: Recoverable = soft delete + purge protection; soft delete is always on, purge protection is the parameter above.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // ARM accepts only true or null here (false is rejected), hence the null.
    enablePurgeProtection: enablePurgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // Key Vault references are resolved by App Service over the public endpoint; a Flex
      // Consumption app without VNet integration has no fixed outbound address to allow.
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// LEADS_ID_KEY's secret, created once and never written again (id-key.bicep says why and how).
module idKey 'id-key.bicep' = {
  name: 'secret-leads-id-key'
  params: {
    vaultName: vault.name
  }
}

module dynamicsClientSecretValue 'keyvault-secret.bicep' = if (!empty(dynamicsClientSecret)) {
  name: 'secret-dynamics-client-secret'
  params: {
    vaultName: vault.name
    name: 'dynamics-client-secret'
    value: dynamicsClientSecret
  }
}

module salesforceClientSecretValue 'keyvault-secret.bicep' = if (!empty(salesforceClientSecret)) {
  name: 'secret-salesforce-client-secret'
  params: {
    vaultName: vault.name
    name: 'salesforce-client-secret'
    value: salesforceClientSecret
  }
}

module marketoClientSecretValue 'keyvault-secret.bicep' = if (!empty(marketoClientSecret)) {
  name: 'secret-marketo-client-secret'
  params: {
    vaultName: vault.name
    name: 'marketo-client-secret'
    value: marketoClientSecret
  }
}

module hubspotTokenValue 'keyvault-secret.bicep' = if (!empty(hubspotToken)) {
  name: 'secret-hubspot-token'
  params: {
    vaultName: vault.name
    name: 'hubspot-token'
    value: hubspotToken
  }
}

module webhookSecretValue 'keyvault-secret.bicep' = if (!empty(webhookSecret)) {
  name: 'secret-webhook-secret'
  params: {
    vaultName: vault.name
    name: 'webhook-secret'
    value: webhookSecret
  }
}

module teamsWebhookUrlValue 'keyvault-secret.bicep' = if (!empty(teamsWebhookUrl)) {
  name: 'secret-teams-webhook-url'
  params: {
    vaultName: vault.name
    name: 'teams-webhook-url'
    value: teamsWebhookUrl
  }
}

module slackWebhookUrlValue 'keyvault-secret.bicep' = if (!empty(slackWebhookUrl)) {
  name: 'secret-slack-webhook-url'
  params: {
    vaultName: vault.name
    name: 'slack-webhook-url'
    value: slackWebhookUrl
  }
}

output idKeySecretName string = idKey.outputs.name
output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
