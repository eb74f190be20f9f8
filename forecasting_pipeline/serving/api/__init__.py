"""The forecast service over HTTP: on-demand Chronos-2 forecasts, health and metrics, in the process that keeps the model loaded."""
