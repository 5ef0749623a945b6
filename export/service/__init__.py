"""The forecasting service: :mod:`.stream_pool` (``StreamPool``: many keyed streams through one
``RollingForecaster``, with snapshots), :mod:`.api` (the HTTP API's bodies, validation, errors and
stream routing, without Ray) and :mod:`.server` (Ray Serve deployments behind it)."""
