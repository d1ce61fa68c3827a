// The user-assigned managed identity the function app runs as. Every connection the app makes
// (host storage, its tables and queues, Key Vault references, Application Insights, ACS Email)
// authenticates as this identity; rbac.bicep gives it exactly the roles it needs.

param name string
param location string = resourceGroup().location
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
