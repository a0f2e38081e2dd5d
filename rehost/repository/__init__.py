"""The replica repository: blobs, packs, index, recovery-point manifests, storage backends.

Nothing here knows about machines or the vault; see docs/design.md for the format.
"""
