"""Export step and deployment runtime for trained TimesCLIP models (installed as
``timesclip_export``)."""
