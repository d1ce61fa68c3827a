"""What every stage shares: settings, storage and HTTP clients with their deadlines and retries,
telemetry, the lead itself and how it is made, and the digests of personal data."""
