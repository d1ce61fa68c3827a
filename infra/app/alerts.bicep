// Azure Monitor's own alerts: they need nothing of the app to run, so a dead app alerts too.
// An action group mails the operators; scheduled-query rules read the app's custom events in the
// Log Analytics workspace (AppEvents: the workspace schema of workspace-based Application
// Insights); a metric rule watches the platform's 401 answers, which never reach the app.
// The queries name only events and properties the app sends: tests/test_telemetry_export.py runs
// the app with the real exporter and checks each name against what it sent.
// Resource types and API versions as documented in the Azure template reference (checked 2026-12-07):
// actionGroups 2023-01-01, scheduledQueryRules 2023-12-01, metricAlerts 2018-03-01.

param namePrefix string
param tags object = {}
param location string = resourceGroup().location
@description('The operators\' addresses, separated by ; (no ; at the end).')
param operatorsEmail string
param workspaceId string
param functionAppId string

var addresses = split(replace(operatorsEmail, ' ', ''), ';')

resource operators 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-operators'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'leadops'
    enabled: true
    emailReceivers: [for (address, i) in addresses: {
      name: 'operator-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
  }
}

// Each rule: a name, what it means, how severe, how often it looks, how far back, its query. A rule
// fires when its query returns a row.
var rules = [
  {
    name: 'no-poll-or-sweep'
    displayName: 'Leads app: no successful poll or sweep for 10 minutes'
    description: 'Neither timer has finished a run for 10 minutes: the app is down, stopped, failing at start (a setting refused), or cannot reach its storage. Leads POSTed now may be refused and table rows wait. See docs/operations.md#alerts.'
    severity: 1
    frequency: 'PT5M'
    window: 'PT10M'
    query: '''
AppEvents
| where Name in ("PollDone", "SweepDone")
| summarize Polls = countif(Name == "PollDone"), Sweeps = countif(Name == "SweepDone")
| where Polls == 0 or Sweeps == 0
'''
  }
  {
    name: 'failed-deliveries'
    displayName: 'Leads app: deliveries failed'
    description: 'Leads could not be delivered to a destination and will not be retried until replayed (python -m leads replay --destination NAME). The app mails LEADS_ALERT_TO too; this alert arrives even when its mail cannot. See docs/operations.md#alerts.'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    query: '''
AppEvents
| where Name == "DeliveryOutcome" and tostring(Properties.outcome) == "failed"
| summarize Failed = count(), Errors = make_set(tostring(Properties.error), 3) by Destination = tostring(Properties.destination)
'''
  }
  {
    name: 'function-failures'
    displayName: 'Leads app: a function failed'
    description: 'A function ended with an exception (the host retries it; a delivery message that fails 5 times goes to the poison queue). See docs/operations.md#alerts.'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    query: '''
AppEvents
| where Name == "FunctionFailed"
| summarize Failures = count() by Function = tostring(Properties.function), Error = tostring(Properties.error)
'''
  }
  {
    name: 'poison-messages'
    displayName: 'Leads app: messages in the poison queue'
    description: 'The host gave up on delivery messages after 5 tries and moved them to the poison queue; the sweep finds their deliveries and queues them again, but something keeps failing. See docs/operations.md#alerts.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT30M'
    query: '''
AppEvents
| where Name == "PoisonMessages"
| summarize Messages = max(toint(Properties["count"])) by Queue = tostring(Properties.queue)
'''
  }
  {
    name: 'leads-silent'
    displayName: 'Leads app: no leads arriving'
    description: 'No lead has arrived from an offer (or from any) for longer than its usual rhythm says is normal: the function key in Partner Center may be stale, the table connection string expired, or the offer\'s lead settings changed. See docs/operations.md#silence.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT30M'
    query: '''
AppEvents
| where Name == "LeadsSilent"
| project TimeGenerated, Offer = tostring(Properties.offer), LastLead = tostring(Properties.lastLeadDay), SilentDays = toint(Properties.silentDays), Cause = tostring(Properties.cause)
'''
  }
]

resource queryRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in rules: {
  name: '${namePrefix}-${rule.name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: rule.frequency
    windowSize: rule.window
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        operators.id
      ]
    }
  }
}]

// A marketplace whose calls the platform refuses (a function key removed or rotated in Partner
// Center's URL) never reaches the app: only the function app's Http401 metric counts them.
resource refusedCalls 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-intake-refused'
  location: 'global'
  tags: tags
  properties: {
    description: 'The function app answered 401 to calls: if they are the marketplace\'s, its URL in Partner Center carries a key the app no longer has (python -m leads check lists the keys). Scanners of the internet get 401s too. See docs/operations.md#alerts.'
    severity: 2
    enabled: true
    scopes: [
      functionAppId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'http401'
          metricNamespace: 'Microsoft.Web/sites'
          metricName: 'Http401'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: operators.id
      }
    ]
  }
}

output actionGroupId string = operators.id
