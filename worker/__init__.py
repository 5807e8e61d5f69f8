"""aml-event-worker: Azure ML events from Event Grid / Event Hubs into automation."""

__version__ = "0.1.0"
