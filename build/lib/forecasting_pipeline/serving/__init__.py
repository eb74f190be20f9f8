"""What people read: the gateway's read path and the charts of forecasts and scores."""
