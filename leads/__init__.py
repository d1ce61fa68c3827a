"""Marketplace lead router: take in every Microsoft commercial marketplace lead, once."""
