"""The cache engine both tiers run.

Keys, freshness, the memory and disk stores, and the coalesced fetch: the
sans-io `fill` and its one I/O shell, `engine`.
"""
