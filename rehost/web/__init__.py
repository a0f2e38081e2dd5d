"""The dashboard: server-rendered pages over the same views as the API, with a little
JavaScript for the failover dialog and live job progress."""
