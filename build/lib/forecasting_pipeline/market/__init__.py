"""Market data, before any model sees it: instruments, trading calendars, bar sources, bar validation and covariates."""
