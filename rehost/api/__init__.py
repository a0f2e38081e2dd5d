"""The portal's REST API: thin HTTP edges over the same services the CLI calls.

Nothing here imports FastAPI at package level, so the CLI can use ``rehost.api.tokens``
without paying for the web stack.
"""
