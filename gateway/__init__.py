"""goodbot gateway: the composition root that hosts the channels and the command line."""
