// One Key Vault secret. A module of its own so that callers can create it conditionally
// (only when a value is given) while the resource itself stays plain and checkable.

param vaultName string
param name string
@secure()
param value string
param contentType string = 'text/plain'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: name
  // checkov:skip=CKV_AZURE_41: No expiry date. These are credentials issued elsewhere (Entra client secrets, HubSpot tokens, storage keys) whose lifetime the issuer controls; Key Vault's exp attribute is informational for secrets and would only mislead. Rotation is documented in docs/deploy.md.
  properties: {
    value: value
    contentType: contentType
  }
}

output name string = secret.name
