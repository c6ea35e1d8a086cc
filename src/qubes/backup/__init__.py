"""Backup and restore in the Qubes backup formats."""
