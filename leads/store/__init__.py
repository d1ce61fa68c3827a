"""The lead store: each lead with its deliveries (the truth), and the rows derived from it (index,
counts, identities) under one protocol that ``verify`` proves; erasure of personal data."""
