"""Chronos-2 forecasting: model inputs, the batched model call, forecast shaping, model loading, device placement
and the long-lived model process."""
