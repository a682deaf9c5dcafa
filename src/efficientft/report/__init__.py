"""Turning stored runs into tables, plots and reports."""
