// The operators' picture of the pipeline: an Azure Monitor Workbook over the workspace's AppEvents
// (leads per day by offer and action, deliveries by destination and outcome, time to delivery,
// failures with their errors, the silence watch). Its queries are in workbook.json, checked by
// tests/test_telemetry_export.py against what the app sends. Microsoft.Insights/workbooks
// 2023-06-01 (the template reference, checked 2026-12-07): kind 'shared', a GUID name.

param displayName string
param tags object = {}
param location string = resourceGroup().location
param workspaceId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, 'leads-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: workspaceId
    serializedData: replace(loadTextContent('workbook.json'), '__WORKSPACE_ID__', workspaceId)
  }
}

output workbookId string = workbook.id
