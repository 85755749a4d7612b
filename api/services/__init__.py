"""Services behind the routers: the job store, driver launchers, run-directory readers."""
