"""PostgreSQL: connections, the ml_predictions and forecast_scores tables, the migration runner, the embedded server."""
