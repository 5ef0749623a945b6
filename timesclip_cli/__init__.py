"""The ``timesclip-darts`` command: the one place that composes the model package
(``timesclip_darts``: demo, train, predict, backtest) and the deployment package
(``timesclip_export``: export, stream, keygen, serve)."""
