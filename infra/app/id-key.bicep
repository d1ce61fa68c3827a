// LEADS_ID_KEY: the key of every digest the app makes of personal data (leads/core/pseudonyms.py: lead
// ids, identity and email-index rows, tombstones of erased leads). It must never change once leads
// are stored (ids and tombstones made with one key do not match under another), so the secret is
// created once and never written again: @onlyIfNotExists (Bicep 0.38 and later) makes the
// deployment's PUT conditional (If-None-Match: *), so every later `azd provision`, from whatever
// machine, leaves the secret and its value as they are. Its first value is two fresh GUIDs, 244
// random bits (newGuid() may only be a parameter's default, hence two parameters); nobody passes
// them, and no deployment after the first uses them.
//
// A module of its own because checkov's pinned Bicep parser does not read @onlyIfNotExists yet:
// tests/test_infra.py leaves this file out of checkov's run and asserts its properties itself.

param vaultName string
@secure()
param firstHalf string = newGuid()
@secure()
param secondHalf string = newGuid()

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

@onlyIfNotExists()
resource idKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'leads-id-key'
  properties: {
    value: '${firstHalf}${secondHalf}'
    contentType: 'text/plain'
  }
}

output name string = idKey.name
