"""Process lifecycle shared by every node: one start/serve/drain/stop shape, the cache node, aiohttp sites,
signals (`serve`), and worker processes sharing a port (`workers`)."""
