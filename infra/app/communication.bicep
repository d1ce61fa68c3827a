// Azure Communication Services + Email for lead notifications (EMAIL_ENDPOINT / EMAIL_SENDER).
//
// An Azure-managed domain (DoNotReply@<guid>.azurecomm.net) is always created and linked, so mail
// works right after `azd up`. It is capped at a few messages a minute; the app folds bursts into
// digests. For your own domain (higher limits, your brand), pass customDomain: the domain is
// created, you add the DNS records from the EMAIL_CUSTOM_DOMAIN_VERIFICATION_RECORDS output and
// verify it, then set customDomainVerified = true and provision again to link it and send from it.
// (A domain cannot be linked to the Communication Services resource before it is verified.)

param communicationServiceName string
param emailServiceName string
param tags object = {}
@description('Where ACS keeps its data at rest. The email service must use the same geography to be linked.')
param dataLocation string = 'United States'
@description('Your own sender domain (e.g. leads.contoso.com). Empty: only the Azure-managed domain.')
param customDomain string = ''
@description('Set to true once the custom domain\'s DNS records are verified; it is then linked and used as the sender.')
param customDomainVerified bool = false
@description('Local part of the sender address.')
param senderUsername string = 'DoNotReply'

var useCustomDomain = !empty(customDomain) && customDomainVerified

resource emailService 'Microsoft.Communication/emailServices@2023-04-01' = {
  name: emailServiceName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
  }
}

resource managedDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = {
  parent: emailService
  name: 'AzureManagedDomain'
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'AzureManaged'
    userEngagementTracking: 'Disabled'
  }
}

resource ownDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = if (!empty(customDomain)) {
  parent: emailService
  name: empty(customDomain) ? 'unused' : customDomain
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'CustomerManaged'
    userEngagementTracking: 'Disabled'
  }
}

resource communicationService 'Microsoft.Communication/communicationServices@2023-04-01' = {
  name: communicationServiceName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
    linkedDomains: useCustomDomain ? [
      managedDomain.id
      ownDomain.id
    ] : [
      managedDomain.id
    ]
  }
}

var senderDomain = useCustomDomain ? ownDomain.properties.mailFromSenderDomain : managedDomain.properties.mailFromSenderDomain

output communicationServiceName string = communicationService.name
output communicationServiceId string = communicationService.id
output endpoint string = 'https://${communicationService.properties.hostName}/'
output sender string = '${senderUsername}@${senderDomain}'
output customDomainVerificationRecords object = empty(customDomain) ? {} : ownDomain.properties.verificationRecords
