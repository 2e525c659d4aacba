"""Alerts: the one JSON format every output consumes (Falco's keys plus Sentinel's)."""

from sentinel.alerts.alert import Alert, format_time

__all__ = ["Alert", "format_time"]
